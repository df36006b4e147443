"""The one prompt builder, R1-AQA's prompt exactly, shared by training, evaluation and serving.

R1-AQA (its public training and MMAU test code) asks:
    f"{question} Please choose the answer from the following options: {choices}. Output the final
    answer in <answer> </answer>."
with `{choices}` the Python list repr (e.g. "['Man', 'Woman']") and "video" in AVQA's questions
replaced by "audio". A caption request (no choices) keeps the style without the options:
    f"{question} Output the final answer in <answer> </answer>."
The text follows one audio part in a single user message, rendered through
the processor's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptConfig:
    """How the policy is asked. One switch for the prompt, the reward's format check and serving."""

    thinking: bool = False  # ask for <think>..</think> before <answer>..</answer>, and reward that format


ANSWER_INSTRUCTION = "Output the final answer in <answer> </answer>."
THINKING_INSTRUCTION = (
    "Output the thinking process in <think> </think> and final answer in <answer> </answer>."
)


def prompt_text(question: str, choices: list[str], *, thinking: bool = False) -> str:
    """The user text of the prompt (without chat markup); no choices: a caption request."""
    question = question.replace("video", "audio")
    instruction = THINKING_INSTRUCTION if thinking else ANSWER_INSTRUCTION
    if not choices:
        return f"{question} {instruction}"
    return f"{question} Please choose the answer from the following options: {choices}. {instruction}"


def prompt_messages(
    question: str, choices: list[str], *, audio_ref: str = "audio.wav", thinking: bool = False
) -> list[dict[str, Any]]:
    """Chat messages in Qwen2-Audio's form: one user turn, audio part first, then the text."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": audio_ref},
                {"type": "text", "text": prompt_text(question, choices, thinking=thinking)},
            ],
        }
    ]


def render_prompt(processor: Any, question: str, choices: list[str], *, thinking: bool = False) -> str:
    """The full prompt string through the processor's chat template, generation turn opened."""
    messages = prompt_messages(question, choices, thinking=thinking)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
