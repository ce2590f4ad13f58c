"""`sdpo_loss` against float64 references written out from the paper's formula."""

import math

import pytest
import torch
from tolerances import assert_fp32_close, magnitude

from trl_sdpo import sdpo_loss


def reference_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    """The paper's formula, term by term, in float64 Python arithmetic (fine for moderate values)."""
    r_w = chosen - ref_chosen
    total = sum(math.exp(beta * ((pj - rj) - r_w)) for pj, rj in zip(rejected, ref_rejected))
    return -math.log(1 / (1 + math.exp(math.log(total))))


def test_k1_equals_dpo_sigmoid_loss():
    torch.manual_seed(0)
    pc, pr, rc, rr = torch.randn(8), torch.randn(8, 1), torch.randn(8), torch.randn(8, 1)
    losses, _, _ = sdpo_loss(pc, pr, rc, rr, beta=0.1)
    # TRL's DPO "sigmoid" loss, written independently in float64
    delta = (pc.double() - rc.double()) - (pr[:, 0].double() - rr[:, 0].double())
    expected = -torch.nn.functional.logsigmoid(0.1 * delta)
    assert_fp32_close(losses, expected, scale=magnitude(expected, 0.1 * delta))  # fp32 against float64


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_matches_paper_formula_in_float64(beta):
    torch.manual_seed(1)
    pc, pr, rc, rr = (
        torch.randn(6, dtype=torch.float64) * 3,
        torch.randn(6, 4, dtype=torch.float64) * 3,
        torch.randn(6, dtype=torch.float64) * 3,
        torch.randn(6, 4, dtype=torch.float64) * 3,
    )
    losses, chosen_rewards, rejected_rewards = sdpo_loss(pc, pr, rc, rr, beta=beta)
    for i in range(6):
        expected = reference_loss(pc[i].item(), pr[i].tolist(), rc[i].item(), rr[i].tolist(), beta)
        assert losses[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    torch.testing.assert_close(chosen_rewards, beta * (pc - rc))
    torch.testing.assert_close(rejected_rewards, beta * (pr - rr))


def test_mask_equals_dropping_padded_negatives():
    torch.manual_seed(2)
    pc, pr, rc, rr = torch.randn(3), torch.randn(3, 4), torch.randn(3), torch.randn(3, 4)
    mask = torch.tensor([[True, True, True, True], [True, False, False, False], [True, True, False, False]])
    losses, _, rejected_rewards = sdpo_loss(pc, pr, rc, rr, beta=1.0, rejected_mask=mask)
    for i in range(3):
        k = int(mask[i].sum())
        alone, _, _ = sdpo_loss(pc[i : i + 1], pr[i : i + 1, :k], rc[i : i + 1], rr[i : i + 1, :k], beta=1.0)
        assert_fp32_close(losses[i : i + 1], alone, scale=magnitude(pc, pr, rc, rr))  # another logsumexp width
    assert (rejected_rewards[~mask] == 0).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_for_huge_margins(sign, dtype):
    # beta * margin = 1e4: the paper's sum of exps overflows at ~88 in fp32
    pc = torch.zeros(2, dtype=dtype, requires_grad=True)
    pr = torch.full((2, 3), sign * 1e4, dtype=dtype)
    zeros = torch.zeros(2, dtype=dtype)
    losses, _, _ = sdpo_loss(pc, pr, zeros, torch.zeros(2, 3, dtype=dtype), beta=1.0)
    assert torch.isfinite(losses).all()
    expected = 1e4 + math.log(3) if sign > 0 else 0.0
    assert losses[0].float().item() == pytest.approx(expected, rel=1e-2, abs=1e-3)
    losses.sum().backward()
    assert torch.isfinite(pc.grad).all()


def test_gradient_matches_float64_autograd_of_naive_formula():
    torch.manual_seed(3)
    pc = torch.randn(4, dtype=torch.float64, requires_grad=True)
    pr = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    rc, rr = torch.randn(4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    sdpo_loss(pc, pr, rc, rr, beta=0.7)[0].sum().backward()
    got = (pc.grad.clone(), pr.grad.clone())
    pc.grad = pr.grad = None
    naive = -torch.log(torch.sigmoid(-torch.log(torch.exp(0.7 * ((pr - rr) - (pc - rc).unsqueeze(1))).sum(1))))
    naive.sum().backward()
    torch.testing.assert_close(got[0], pc.grad)
    torch.testing.assert_close(got[1], pr.grad)


def test_row_without_negatives_is_an_error():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"Rows \[1\] have no real negative"):
        sdpo_loss(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 2), 1.0, mask)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        sdpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="rejected_mask"):
        sdpo_loss(
            torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3), 1.0, torch.ones(2, 2, dtype=bool)
        )
