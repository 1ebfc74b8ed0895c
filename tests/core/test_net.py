import pytest
import torch

from bnexp.core.net import DeepConvNet, conv_plan, use_bias
from bnexp.core.norm import ManualBatchNorm


@pytest.mark.parametrize("depth", [1, 3, 4, 8, 19])
@pytest.mark.parametrize("bn", ["off", "pre", "post"])
@pytest.mark.parametrize("bias", ["auto", "true", "false"])
def test_shapes_every_variant(depth, bn, bias):
    m = DeepConvNet(depth=depth, bn=bn, bias=bias)
    assert m(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    convs = [b.layer for b in m.features]
    assert len(convs) == depth
    for i, c in enumerate(convs, start=1):
        assert c.out_channels == 4 * i and c.kernel_size == (3, 3)
        assert c.stride == ((2, 2) if i % 3 == 0 else (1, 1))
        assert (c.bias is not None) == use_bias(bn, bias)
    n_bn = sum(b.bn is not None for b in m.features) + (m.fc.bn is not None)
    assert n_bn == (0 if bn == "off" else depth + 1)
    assert m.head.bias is not None  # the dense output always has its bias


def test_bias_auto_rule():
    assert use_bias("pre", "auto") is False  # BN directly after the layer: beta replaces the bias
    assert use_bias("post", "auto") is True  # conv -> ReLU -> BN: the bias acts before the ReLU
    assert use_bias("off", "auto") is True
    assert use_bias("pre", "true") is True and use_bias("off", "false") is False


def test_tf_same_padding_sizes():
    # TF SAME: out = ceil(in / stride); depth 19 ends at 1x1x76, FC input 76
    plan = conv_plan(19)
    assert [p["hw_out"] for p in plan if p["stride"] == 2] == [14, 7, 4, 2, 1, 1]
    assert plan[2]["pad"] == (0, 1)  # 28 -> 14: odd pixel on the bottom/right, as TF
    m = DeepConvNet(depth=19)
    assert m.fc.layer.in_features == 76


def test_tf_same_padding_matches_tf_alignment():
    # For a stride-2 layer at 28x28, TF pads (0, 1): output pixel (0, 0) sees input rows/cols 0..2.
    m = DeepConvNet(depth=3, bn="off", bias="false")
    conv3 = m.features[2]
    x = torch.zeros(1, 8, 28, 28)
    x[..., 0, 0] = 1.0  # only the top-left input pixel is on
    w = conv3.layer.weight
    y = conv3.layer(conv3.pad(x))
    # with (0, 1) padding input (0,0) is kernel tap (0,0) of output (0,0); symmetric padding would make it tap (1,1)
    assert torch.allclose(y[0, :, 0, 0], w[:, :, 0, 0].sum(1))


def test_truncated_normal_init():
    m = DeepConvNet(depth=19, bn="pre")
    w = torch.cat([b.layer.weight.flatten() for b in m.features])
    assert w.abs().max() <= 0.1 + 1e-6  # cut at 2 std
    assert 0.035 < w.std() < 0.05  # truncation shrinks std to ~0.88 * 0.05


def test_manual_impl_used():
    m = DeepConvNet(depth=3, bn="post", bn_impl="manual")
    assert all(isinstance(b.bn, ManualBatchNorm) for b in m.features)


def test_bad_values_rejected():
    with pytest.raises(ValueError, match="choose one of off, pre, post"):
        DeepConvNet(bn="foo")
    with pytest.raises(ValueError, match="depth"):
        DeepConvNet(depth=0)
