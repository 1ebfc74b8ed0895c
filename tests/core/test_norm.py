"""The seed's hand-written BN (model.bn_impl=manual) must agree with the library layer."""

import copy

import pytest
import torch

from bnexp.core.net import DeepConvNet
from bnexp.core.norm import ManualBatchNorm, build_bn


@pytest.mark.parametrize("dims,shape", [(2, (16, 6, 5, 5)), (1, (16, 6))])
def test_manual_equals_torch_layer(dims, shape):
    torch.manual_seed(0)
    a = build_bn("torch", 6, dims, 0.01, 1e-3)
    b = build_bn("manual", 6, dims, 0.01, 1e-3)
    for _ in range(20):
        x = torch.randn(shape) * 3 + 1
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.running_mean, b.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.running_var, b.running_var, atol=1e-6, rtol=1e-5)
    a.eval(), b.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_manual_follows_seed_formula():
    # pop = pop * decay + batch * (1 - decay), with the batch moments per feature map
    bn = ManualBatchNorm(3, momentum=0.01, eps=1e-3)
    x = torch.randn(8, 3, 4, 4) * 2 + 5
    y = bn(x)
    mean = x.mean((0, 2, 3))
    var_b = x.var((0, 2, 3), unbiased=False)
    ref = (x - mean.view(1, 3, 1, 1)) / torch.sqrt(var_b.view(1, 3, 1, 1) + 1e-3)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.01 * mean)
    n = 8 * 4 * 4
    torch.testing.assert_close(bn.running_var, 0.99 + 0.01 * var_b * n / (n - 1))
    bn.eval()  # inference: population statistics, not the batch's
    torch.testing.assert_close(
        bn(x),
        (x - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + 1e-3),
    )


def _twin_nets(bn: str, dtype=torch.float32):
    torch.manual_seed(0)
    a = DeepConvNet(depth=6, bn=bn, bn_impl="torch").to(dtype)
    b = DeepConvNet(depth=6, bn=bn, bn_impl="manual").to(dtype)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "num_batches_tracked" not in k})
    return a, b


@pytest.mark.parametrize("bn", ["pre", "post"])
def test_whole_net_manual_equals_torch_20_training_batches(bn):
    # training outputs, running statistics after 20 batches and eval outputs, to 1e-5 (float32)
    a, b = _twin_nets(bn)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.rand(32, 1, 28, 28, generator=g)
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)
    sa = a.state_dict()
    for k, v in b.state_dict().items():
        torch.testing.assert_close(sa[k], v, atol=1e-5, rtol=1e-5, msg=k)
    assert not torch.allclose(sa["features.0.bn.running_mean"], torch.zeros(4))  # they did move
    a.eval(), b.eval()
    x = torch.rand(16, 1, 28, 28, generator=g)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bn", ["pre", "post"])
def test_whole_net_manual_equals_torch_20_sgd_steps(bn):
    # with weight updates too; float64 so that rounding is not amplified into the comparison
    a, b = _twin_nets(bn, torch.float64)
    oa, ob = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (a, b))
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.rand(32, 1, 28, 28, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (32,), generator=g)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    sa = a.state_dict()
    for k, v in b.state_dict().items():
        torch.testing.assert_close(sa[k], v, atol=1e-9, rtol=1e-7, msg=k)
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("impl", ["torch", "manual"])
def test_batch_of_one_eval_equals_batch_eval(impl):
    torch.manual_seed(0)
    m = DeepConvNet(depth=6, bn="pre", bn_impl=impl)
    for _ in range(5):  # move the population statistics away from their init
        m(torch.rand(32, 1, 28, 28))
    m.eval()
    x = torch.rand(10, 1, 28, 28)
    batch = m(x)
    single = torch.cat([m(x[i : i + 1]) for i in range(10)])
    torch.testing.assert_close(single, batch, atol=1e-5, rtol=1e-5)
    # and in train mode the batch of one would differ: the check has teeth
    m.train()
    m2 = copy.deepcopy(m)
    assert not torch.allclose(m2(x[:2])[0], batch[0], atol=1e-3)
