"""The judge's wording and reading: the released prompts, the messages of one judgement, the score in a reply.

The judge is part of the reward, so its prompts are protocol data like the agent's system prompt; a config
may replace them, but the user prompt must keep the fields {question}, {ground_truth} and {prediction}.
"""

from __future__ import annotations

import string

from mini_o3_jax.errors import ConfigError

# The released judge prompts, byte for byte (verl `general_qa_tool.py`, `SYSTEM_PROMPT` and `QUERY_PROMPT`;
# spec §4.5): the judge is part of the reward, so its wording is protocol data like the agent's system prompt.
SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs.\n"
    "Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:\n"
    "------\n"
    "##INSTRUCTIONS:\n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)

# Format fields: {question} (the raw dataset `problem`, "<image>\n" included), {ground_truth} (the raw
# `solution`, a bare letter for multiple choice) and {prediction} (the extracted answer).
USER_PROMPT_TEMPLATE = (
    "I will give you a question related to an image and the following text as inputs:\n"
    "\n"
    "1. **Question Related to the Image**: {question}\n"
    "2. **Ground Truth Answer**: {ground_truth}\n"
    "3. **Model Predicted Answer**: {prediction}\n"
    "\n"
    "Your task is to evaluate the model's predicted answer against the ground truth answer, based on the context provided by the question related to the image. Consider the following criteria for evaluation:\n"
    "- **Relevance**: Does the predicted answer directly address the question posed, considering the information provided by the given question?\n"
    "- **Accuracy**: Compare the predicted answer to the ground truth answer. You need to evaluate from the following two perspectives:\n"
    "(1) If the ground truth answer is open-ended, consider whether the prediction accurately reflects the information given in the ground truth without introducing factual inaccuracies. If it does, the prediction should be considered correct.\n"
    "(2) If the ground truth answer is a definitive answer, strictly compare the model's prediction to the actual answer. Pay attention to unit conversions such as length and angle, etc. As long as the results are consistent, the model's prediction should be deemed correct.\n"
    "**Output Format**:\n"
    "Your response should include an integer score indicating the correctness of the prediction: 1 for correct and 0 for incorrect. Note that 1 means the model's prediction strictly aligns with the ground truth, while 0 means it does not.\n"
    'The format should be "Score: 0 or 1"'
)

PROMPT_FIELDS = ("question", "ground_truth", "prediction")


def check_user_prompt(template: str, where: str = "JudgeConfig.user_prompt") -> None:
    """Raise ConfigError unless ``template`` uses exactly the fields {question}, {ground_truth}, {prediction}.

    A template missing one would judge without that input; an unknown one (a typo, a positional ``{}``)
    would fail on the first judgement, deep in a worker thread, instead of at startup.
    """
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # a lone "{" or "}"
        raise ConfigError(f"{where}: not a valid format string ({exc}); write literal braces as {{{{ and }}}}") from None
    unknown, missing = sorted(used - set(PROMPT_FIELDS)), [f for f in PROMPT_FIELDS if f not in used]
    if unknown or missing:
        problems = ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
        raise ConfigError(f"{where}: {'; '.join(problems)}; the template must use exactly "
                          "{question}, {ground_truth} and {prediction}")


def build_messages(
    question: str,
    ground_truth: str,
    prediction: str,
    *,
    system_prompt: str = SYSTEM_PROMPT,
    user_prompt: str = USER_PROMPT_TEMPLATE,
) -> list[dict[str, str]]:
    """Return the chat messages ``[system, user]`` for one judgement (text only: the judge never sees the image).

    ``question`` is the raw dataset ``problem`` (``<image>`` placeholder included) and ``ground_truth`` the raw
    ``solution``, as in the release; only the user prompt is a template, the system prompt is sent as is.
    """
    user = user_prompt.format(question=question, ground_truth=ground_truth, prediction=prediction)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def parse_score(reply: str) -> float | None:
    """Parse a judge reply into 1.0 / 0.0, or ``None`` when it holds no score (the attempt is then retried).

    The released rule: take the text after the *last* ``score:`` (case-insensitive) and keep its first
    whitespace-separated token. A reply without ``score:``, or whose token holds neither ``0`` nor ``1``
    ("Score: maybe"), is a failed attempt. Otherwise the score is 1.0 when the token contains ``1``, else
    0.0, quirks included: ``Score:10`` or ``Score: 0.1`` both give 1.0.
    """
    lowered = reply.lower()
    at = lowered.rfind("score:")
    if at < 0:
        return None
    tokens = lowered[at + len("score:") :].split()
    if not tokens:
        return None
    if "1" in tokens[0]:
        return 1.0
    return 0.0 if "0" in tokens[0] else None
