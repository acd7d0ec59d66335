"""The Mini-o3 agent protocol: prompts, tool-call parsing, the zoom tool and episode state."""
