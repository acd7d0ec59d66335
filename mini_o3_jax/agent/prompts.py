"""The exact strings Mini-o3 was trained with (recipe spec §1), typos included.

Released weights saw these byte for byte; "outputing", "the the" and "Countinue" are part of the
protocol, not mistakes to fix.
"""

SYSTEM_PROMPT_TOOL_CROP = (
    "You are a helpful assistant. Answer the user's question based on the image provided. Output your "
    "thinking process within the <think> and </think> tags. Whenever you find anything unclear, you can "
    "zoom in a specific region in the given image to see more clearly by outputing "
    '<grounding>{"bbox_2d": [x0, y0, x1, y1], "source": "original_image"}</grounding>, where (x0, y0) and '
    "(x1, y1) are the top-left and bottom-right coordinates of the region that you want to zoom in, "
    "respectively (suppose the width and height of the image are 1.0), and 'source' refers to the image "
    "that you zoom in and could be either 'original_image' or 'observation_i'. Once the final answer is "
    "confirmed, put it within <answer> and </answer>."
)

# Appended after a successful zoom (loss mask 0). {action} = 0-based assistant turn, {observation} = action + 1.
OBSERVATION_TEMPLATE = (
    "<|im_end|>\n<|im_start|>user\nAfter the above Action {action}, here is the the zoom-in image "
    "(Observation {observation}):\n<|vision_start|><|image_pad|><|vision_end|>.\nContinue your reasoning "
    "process inside <think> and </think>. If needed, you can continue to zoom in on the original image or "
    "any of the observations, by outputting <grounding> and </grounding> as before. If the final answer is "
    "confirmed, put your final answer inside <answer> and </answer>.<|im_end|>\n<|im_start|>assistant\n"
)

# Appended after a failed tool call; no image, and the turn still counts against the limit.
ERROR_TEMPLATE = (
    "<|im_end|>\n<|im_start|>user\nERROR occurs during grounding. Error Information: {error}.\n"
    "Please analyze the error information obtained from the function tool and adjust your response. "
    "Countinue your reasoning process inside <think> and </think>.<|im_end|>\n<|im_start|>assistant\n"
)

STOP_STRING = "</grounding>"
