"""Memory at the released shapes, from XLA's own accounting: the real model code compiled (not run) at
Qwen2.5-VL-7B widths on the CPU, `memory_analysis()` read back. Compiling a 32-layer scanned tower takes
seconds; nothing here allocates the arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mini_o3_jax.model.presets import model_config
from mini_o3_jax.model.vision import VisionInputs, VisionTower
from mini_o3_jax.processing.image import smart_resize
from mini_o3_jax.processing.positions import bucket, vision_layout, window_band
from tests.helpers import run_on_devices

VISION_7B = model_config("qwen2_5_vl_7b").vision


def grid(width: int, height: int) -> list[int]:
    h, w = smart_resize(height, width)
    return [1, h // 14, w // 14]


def vit_grad_memory(grids: list[list[int]]) -> tuple[int, int, int]:
    """(patch rows, band windows, temp bytes) of the 7B vision tower's forward + backward (bf16, remat
    "full", as trained in RL) over one micro-batch holding images of `grids`."""
    cfg = VISION_7B
    layout = vision_layout(grids, 2, 4)
    layout = vision_layout(grids, 2, 4, num_windows=bucket(layout.num_windows, 4))
    band = window_band(layout.frame_windows)
    p = layout.num_slots
    tower = nnx.eval_shape(lambda: VisionTower(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), remat="full"))
    graphdef, state = nnx.split(tower)

    def grads(state, pixels, pos_hw, window_seg, image_seg, window_first):
        inputs = VisionInputs(pixels, pos_hw, window_seg, image_seg, band, window_first)
        return jax.grad(lambda s: nnx.merge(graphdef, s)(inputs).astype(jnp.float32).sum())(state)

    rows = jax.ShapeDtypeStruct((p,), jnp.int32)
    compiled = jax.jit(grads).lower(state, jax.ShapeDtypeStruct((p, cfg.patch_dim), jnp.float32),
                                    jax.ShapeDtypeStruct((p, 2), jnp.int32), rows, rows,
                                    jax.ShapeDtypeStruct((p // 64,), jnp.int32)).compile()
    return p, len(band), compiled.memory_analysis().temp_size_in_bytes


def test_vit_band_is_the_image_not_a_power_of_two():
    # a 2-Mpx original spans 180 windows: the band reads 192 (it read 2 * 256 - 1 = 511)
    original = vision_layout([grid(1932, 1035)], 2, 4)
    assert original.frame_windows == 180 and len(window_band(original.frame_windows)) == 192
    assert all(len(window_band(n)) <= 1.25 * n for n in range(1, 3000))


def test_vit_forward_backward_memory_is_linear_in_the_images_at_7b_widths():
    """A 2-Mpx original + 11 zoom crops (0.5 Mpx each; 49k patch rows) through the 7B tower and back: the
    band read a call at a time, so memory follows the patch count. Before: 759 GB of temporaries (every
    window gathered a 511-window band at once); now ~16.5 GB on one device, ~3.2 GB per device when the
    rows are split 8 ways (`act_patches`)."""
    original, crop = grid(1932, 1035), grid(700, 700)
    p12, band, temp12 = vit_grad_memory([original] + [crop] * 11)
    p6, _, temp6 = vit_grad_memory([original] + [crop] * 5)
    assert band == 192 and p12 == 768 * 64
    assert temp12 < 20e9, temp12 / 1e9
    # linear: twice the rows cost at most a little over twice the memory (quadratic would be ~4x)
    assert (temp12 / temp6) < 1.15 * (p12 / p6), (temp12 / temp6, p12 / p6)


def text_grad_memory(length: int) -> int:
    """Temp bytes of one 7B decoder layer's forward + backward (bf16, remat "full") over one `length`-token
    row, on the XLA attention path (the CPU's; the TPU/GPU kernels are flash-style as well)."""
    from mini_o3_jax.model.text import TextDecoder

    cfg = dataclasses.replace(model_config("qwen2_5_vl_7b").text, num_hidden_layers=1)
    decoder = nnx.eval_shape(lambda: TextDecoder(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), remat="full"))
    graphdef, state = nnx.split(decoder)
    half = cfg.head_dim // 2

    def grads(state, x, cos, sin, seg, pos):
        return jax.grad(lambda s: nnx.merge(graphdef, s)(x, cos, sin, seg, pos).astype(jnp.float32).sum())(state)

    row = jax.ShapeDtypeStruct((1, length), jnp.int32)
    trig = jax.ShapeDtypeStruct((1, length, 2 * half), jnp.bfloat16)
    compiled = jax.jit(grads).lower(state, jax.ShapeDtypeStruct((1, length, cfg.hidden_size), jnp.bfloat16),
                                    trig, trig, row, row).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_decoder_gradient_memory_is_linear_in_the_length_at_7b_widths():
    """Attention's backward recomputes scores from the saved log-sum-exp, one rematerialised query chunk at a
    time: doubling the row doubles the temporaries. Measured 5.0 / 9.3 / 18.0 GB at 8K / 16K / 32K; before the
    chunks were rematerialised XLA kept a (chunks x heads x rows x keys) mask across the loop: 6.4 / 15.7 /
    45.9 GB, quadratic."""
    t8, t16, t32 = (text_grad_memory(n) for n in (8192, 16384, 32768))
    assert t16 / t8 < 2.3 and t32 / t16 < 2.3, (t8 / 1e9, t16 / 1e9, t32 / 1e9)


ROWS_SCRIPT = r'''
import dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mini_o3_jax.model.presets import model_config
from mini_o3_jax.model.vision import VisionInputs, VisionTower
from mini_o3_jax.parallel.rules import activation_sharding, DEFAULT_RULES
from mini_o3_jax.train.plan import _compile

cfg = dataclasses.replace(model_config("qwen2_5_vl_7b").vision, depth=2, fullatt_block_indexes=(1,))
tower = nnx.eval_shape(lambda: VisionTower(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0), remat="full"))
graphdef, state = nnx.split(tower)
per_row, band = 64, 48
out = {}
for layout in ("rows", "packed"):
    for n in (2, 4, 8):
        mesh = Mesh(np.array(jax.devices()[:n]), ("fsdp",))
        def sh(*spec): return NamedSharding(mesh, P(*spec))
        p = n * per_row * 64
        first_rows = n if layout == "rows" else 1
        def grads(state, pixels, pos_hw, wseg, iseg, first):
            inputs = VisionInputs(pixels, pos_hw, wseg, iseg, jnp.arange(band, dtype=jnp.int32), first)
            return jax.grad(lambda s: nnx.merge(graphdef, s)(inputs).astype(jnp.float32).sum())(state)
        st = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh()), state)
        args = (jax.ShapeDtypeStruct((p, cfg.patch_dim), jnp.bfloat16, sharding=sh("fsdp")),
                jax.ShapeDtypeStruct((p, 2), jnp.int32, sharding=sh("fsdp")),
                jax.ShapeDtypeStruct((p,), jnp.int32, sharding=sh("fsdp")),
                jax.ShapeDtypeStruct((p,), jnp.int32, sharding=sh("fsdp")),
                jax.ShapeDtypeStruct((first_rows, n * per_row // first_rows), jnp.int32,
                                     sharding=sh("fsdp" if first_rows > 1 else None)))
        with activation_sharding(mesh, DEFAULT_RULES):
            _, reserved, src = _compile(jax.jit(grads).lower(st, *args))
        out[f"{layout}{n}"] = reserved
        assert src == "buffer assignment"
print("RESULT " + json.dumps(out))
'''


def test_vit_per_row_layout_keeps_each_device_on_its_own_rows():
    """Rows split over devices (one 64-window row each, a 48-window band) at 7B ViT widths (2 blocks, one of
    them full attention): with each row's images in a layout row of its own (`positions.row_layouts`) the
    band gathers stay on the row's device, so per-device memory is the same on 2, 4 and 8 devices; with all
    images packed in one layout row the gathers index every window and XLA moves keys between devices, so
    per-device memory grows with the device count (on a v5p-128 that made SFT need 103 GB a chip)."""
    got = run_on_devices(ROWS_SCRIPT, timeout=600)
    assert got["rows2"] == got["rows4"] == got["rows8"], got
    assert got["packed8"] > 1.08 * got["packed2"], got
