"""Mixed precision: bf16 autocast only where the CPU computes bf16 natively, and a bf16 training step that
gives finite gradients to every parameter of every family while everything stored stays float32."""
import pytest
import torch

from lightdet.backbones import DEFAULT_VARIANT
from lightdet.losses import build_loss
from lightdet import precision
from lightdet.model import build_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("cpuinfo, native", [
    ("flags\t\t: fpu sse avx512f avx512bw avx512_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse avx512f avx512bw amx_bf16\n", True),
    ("flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n", False),   # oneDNN would emulate bf16 here
    ("Features\t: fp asimd evtstrm aes sve bf16 i8mm\n", True),           # Arm
    ("Features\t: fp asimd evtstrm aes crc32\n", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native, tmp_path):
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{cpuinfo}")
    assert precision.native_bf16(tmp_path / "cpuinfo") is native
    assert precision.native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native", [True, False])
def test_bf16_is_on_by_default_only_where_native_and_faster(native, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    faster = {family for family, speedup in precision.BF16_SPEEDUP.items() if speedup >= precision.BF16_MIN_SPEEDUP}
    assert faster and faster != set(DEFAULT_VARIANT)   # the table decides, and it is not all or nothing
    for family in DEFAULT_VARIANT:
        assert precision.default_amp(CPU, family) is (native and family in faster), family
        assert precision.default_amp(CPU, f"{family}_variant") is (native and family in faster)
        assert precision.default_amp(CUDA, family) is True
    assert precision.default_amp(CPU, "cspdarknet", head="rtdetr") is False   # measured with the anchor head only


@pytest.mark.parametrize("backbone, head", [(family, "anchor") for family in DEFAULT_VARIANT]
                         + [("mobilenetv3_small", "rtdetr")])
def test_a_bf16_training_step_is_finite_and_stays_float32(backbone, head):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=3, head=head).train().to(memory_format=torch.channels_last)
    criterion = build_loss(model, 3, 64)
    images = torch.rand(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.3, 0.4], [0, 2, 0.7, 0.6, 0.4, 0.5], [1, 1, 0.5, 0.5, 0.6, 0.7]])
    state = {key: value.clone() for key, value in model.state_dict().items()}
    reference, _ = precision.forward_loss(model, criterion, images, targets, amp=False)
    model.load_state_dict(state)   # the same BatchNorm statistics for the bf16 forward
    dtypes = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    loss, _ = precision.forward_loss(model, criterion, images, targets, amp=True)
    assert dtypes == [torch.bfloat16]   # autocast was on
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=0.05)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.dtype == param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all(), name
    assert all(buffer.dtype != torch.bfloat16 for buffer in model.buffers())
    assert all(torch.isfinite(buffer).all() for buffer in model.buffers() if buffer.is_floating_point())


def test_float32_converts_nested_outputs_and_keeps_the_rest():
    half = torch.ones(2, dtype=torch.bfloat16)
    index = torch.arange(3)
    converted = precision.float32({"maps": [half, (half, None)], "index": index, "count": 4})
    assert converted["maps"][0].dtype == converted["maps"][1][0].dtype == torch.float32
    assert converted["maps"][1][1] is None and converted["index"] is index and converted["count"] == 4
