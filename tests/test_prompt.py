"""The prompt builder reproduces R1-AQA's prompt exactly, through the chat template."""

from __future__ import annotations

from rollout.prompt import prompt_messages, prompt_text, render_prompt

R1_AQA_EXAMPLE = (
    "What is the gender of the speaker in the audio? Please choose the answer from the following "
    "options: ['Man', 'Woman']. Output the final answer in <answer> </answer>."
)


def test_prompt_text_matches_r1_aqa_exactly():
    assert prompt_text("What is the gender of the speaker in the video?", ["Man", "Woman"]) == R1_AQA_EXAMPLE


def test_choices_are_the_python_list_repr_with_quotes_escaped():
    text = prompt_text("Which one?", ["it's loud", 'say "hi"', "plain"])
    assert "options: [\"it's loud\", 'say \"hi\"', 'plain']." in text


def test_thinking_variant_asks_for_think_then_answer():
    text = prompt_text("Q?", ["a", "b"], thinking=True)
    assert text.endswith(
        "Output the thinking process in <think> </think> and final answer in <answer> </answer>."
    )


def test_messages_put_the_audio_part_before_the_text():
    (message,) = prompt_messages("Q?", ["a", "b"])
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["audio", "text"]


def test_rendered_prompt_through_the_chat_template(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    rendered = render_prompt(processor, "What is the gender of the speaker in the video?", ["Man", "Woman"])
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        f"{R1_AQA_EXAMPLE}<|im_end|>\n<|im_start|>assistant\n"
    )
