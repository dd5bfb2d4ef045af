import pytest
import torch

from robusttune.errors import CheckpointError
from robusttune.method import cam, losses, masking, refill, wise


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_relevance_of_identity_attention_is_zero_on_patches_and_follows_attention():
    # With attention concentrated from the class token onto patch 2 and positive gradients,
    # the relevance of patch 2 dominates.
    tokens = 5
    attn = torch.zeros(1, 2, tokens, tokens)
    attn[..., :, 0] = 0.5
    attn[..., 0, 3] = 0.5  # class token attends to token 3 = patch index 2
    attn[..., 1:, 1:] += torch.eye(tokens - 1) * 0.5
    grads = torch.ones_like(attn)
    relevance = cam.attention_relevance([attn], [grads])
    assert relevance.shape == (1, tokens - 1)
    assert int(relevance.argmax()) == 2
    torch.testing.assert_close(relevance[0, [0, 1, 3]], torch.zeros(3))
    # negative gradient * attention contributions are clamped away
    assert float(cam.attention_relevance([attn], [-grads]).abs().sum()) == 0.0


def test_relevance_composes_blocks_as_R_plus_A_R():
    torch.manual_seed(0)
    a1, a2 = torch.rand(2, 1, 3, 4, 4).softmax(-1).unbind(0)
    g1, g2 = torch.randn(2, 1, 3, 4, 4).unbind(0)
    m1, m2 = (g1 * a1).clamp(min=0).mean(1), (g2 * a2).clamp(min=0).mean(1)
    r = torch.eye(4)[None] + m1 @ torch.eye(4)[None]
    r = r + m2 @ r
    torch.testing.assert_close(cam.attention_relevance([a1, a2], [g1, g2]), r[:, 0, 1:])


def test_grad_cam_weights_channels_by_the_gradient_summed_over_all_tokens():
    tokens = torch.zeros(1, 4, 2)  # token 0 is the class token
    tokens[0, 1:, 0] = torch.tensor([1.0, 2.0, 3.0])
    tokens[0, 1:, 1] = torch.tensor([5.0, 0.0, 0.0])
    grads = torch.zeros(1, 4, 2)
    grads[0, 1:, 0] = 1.0
    grads[0, 1:, 1] = -1.0
    # patch gradients only: weights (3, -3), map relu(3 * c0 - 3 * c1) = (0, 6, 9)
    torch.testing.assert_close(cam.grad_cam(tokens, grads), torch.tensor([[0.0, 6.0, 9.0]]))
    # the class token's gradient counts too (the official weighting): it flips channel 1's weight to +1, which
    # turns the first patch on and makes it the top patch (patch-only weights would keep it at zero)
    grads[0, 0, 1] = 4.0
    torch.testing.assert_close(cam.grad_cam(tokens, grads), torch.tensor([[8.0, 6.0, 9.0]]))
    grads[0, 0, 0] = -2.9  # and it can all but cancel a channel: weights (0.1, 1), the first patch now on top
    torch.testing.assert_close(cam.grad_cam(tokens, grads), torch.tensor([[5.1, 0.2, 0.3]]))


CAM = torch.tensor([[0.1, 0.9, 0.25, 1.0, 0.0, 0.31], [2.0, 0.2, 0.4, 0.0, 1.0, 0.61]])


def test_threshold_masks_normalise_by_max_only():
    obj = masking.threshold_mask(CAM, "object", 0.3, gen())
    assert obj.tolist() == [[False, True, False, True, False, True], [True, False, False, False, True, True]]
    ctx = masking.threshold_mask(CAM, "context", 0.3, gen())
    assert torch.equal(ctx, ~obj)
    # row 2 is divided by its max (2.0): 0.61 -> 0.305, below 0.31 (unnormalised it would be above)
    assert bool(masking.threshold_mask(CAM, "object", 0.31, gen())[1, 5]) is False
    assert bool(masking.threshold_mask(CAM, "object", 0.30, gen())[1, 5]) is True


def test_ratio_masks_pick_exact_counts():
    obj = masking.ratio_mask(CAM, "object", 0.5, gen())
    assert obj.sum(1).tolist() == [3, 3]
    assert obj[0].nonzero().flatten().tolist() == [1, 3, 5] and obj[1].nonzero().flatten().tolist() == [0, 4, 5]
    ctx = masking.ratio_mask(CAM, "context", 1 / 3, gen())
    assert ctx.sum(1).tolist() == [2, 2] and ctx[0].nonzero().flatten().tolist() == [0, 4]
    rnd = masking.ratio_mask(torch.zeros(50, 49), "random", 0.25, gen())
    assert rnd.sum(1).eq(round(0.25 * 49)).all()
    assert len({tuple(r.tolist()) for r in rnd}) > 40  # different patches per image
    assert masking.ratio_mask(CAM, "object", 0.0, gen()).sum() == 0


def test_random_threshold_mask_is_a_probability_and_seeded():
    first = masking.threshold_mask(torch.zeros(200, 49), "random", 0.3, gen(5))
    assert abs(float(first.float().mean()) - 0.3) < 0.02
    assert torch.equal(first, masking.threshold_mask(torch.zeros(200, 49), "random", 0.3, gen(5)))


def test_random_mask_without_refill_masks_an_exact_count_as_the_official_code():
    scores = torch.zeros(64, 36)
    exact = masking.threshold_mask(scores, "random", 0.75, gen(3), exact_count=True)
    assert exact.sum(1).eq(36 - int(36 * 0.25)).all()  # 9 patches kept, 27 masked, in every image
    assert len({tuple(r.tolist()) for r in exact}) > 60  # a different random subset per image
    assert torch.equal(exact, masking.threshold_mask(scores, "random", 0.75, gen(3), exact_count=True))  # seeded
    assert masking.threshold_mask(torch.zeros(3, 49), "random", 0.5, gen(), exact_count=True).sum(1).eq(49 - 24).all()
    free = masking.threshold_mask(scores, "random", 0.75, gen(3))  # with a refill: each patch independently
    assert len(set(free.sum(1).tolist())) > 1


def images_with_ids(n, size=8):
    # image i has value i everywhere, patch p of channel 1 has value 100 + p: donors are traceable
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    return images


def test_patch_round_trip_and_single_donor_refill():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 8, 8)
    assert torch.equal(refill.from_patches(refill.to_patches(images, (4, 4)), images.shape, (4, 4)), images)
    ids = images_with_ids(4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, [1, 2]] = True
    donors = torch.tensor([2, 0, 3, 1])
    out = refill.to_patches(refill.refill(ids, mask, donors, (4, 4)), (4, 4))
    for i in range(4):
        assert out[i, 1].eq(donors[i]).all() and out[i, 2].eq(donors[i]).all()  # one donor for every masked patch
        assert out[i, 0].eq(i).all() and out[i, 3].eq(i).all()  # unmasked patches untouched
    perm = refill.single_donors(16, gen())
    assert sorted(perm.tolist()) == list(range(16))


def test_multi_donor_refill_never_uses_the_image_itself():
    donors = refill.multi_donors(5, 36, gen(3))
    assert donors.shape == (5, 36) and not donors.eq(torch.arange(5)[:, None]).any()
    ids = images_with_ids(5, size=24)
    mask = torch.ones(5, 36, dtype=torch.bool)
    out = refill.to_patches(refill.refill(ids, mask, donors, (4, 4)), (4, 4))
    assert torch.equal(out[..., 0], donors.float())  # each patch comes from its own donor
    assert len(torch.unique(donors[0])) > 1


def test_feature_mse_normalisation_is_scale_free():
    torch.manual_seed(0)
    teacher, student = torch.randn(32, 16), torch.randn(32, 16)
    plain = losses.feature_mse(student, teacher, normalise=False)
    torch.testing.assert_close(plain, ((student - teacher) ** 2).mean())
    scaled = losses.feature_mse(8 * student, 8 * teacher, normalise=True)
    torch.testing.assert_close(scaled, losses.feature_mse(student, teacher, normalise=True))
    assert losses.feature_mse(8 * student, 8 * teacher, normalise=False) > 60 * plain


def test_logit_kd_is_zero_for_equal_logits_and_scaled_by_t_squared():
    logits = torch.randn(4, 10)
    assert float(losses.logit_kd(logits, logits, temperature=10.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(4, 10)
    t = 2.0
    p = torch.softmax(other / t, 1)
    expected = (p * (torch.log_softmax(other / t, 1) - torch.log_softmax(logits / t, 1))).sum(1).mean() * t * t
    torch.testing.assert_close(losses.logit_kd(logits, other, temperature=t), expected)


def test_wise_interpolation_endpoints_and_midpoint():
    a = {"w": torch.zeros(3), "n": torch.tensor(1)}
    b = {"w": torch.ones(3) * 2, "n": torch.tensor(5)}
    assert torch.equal(wise.interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(wise.interpolate(a, b, 1.0)["w"], b["w"])
    torch.testing.assert_close(wise.interpolate(a, b, 0.25)["w"], torch.full((3,), 0.5))
    assert int(wise.interpolate(a, b, 0.5)["n"]) == 5
    assert wise.DEFAULT_ALPHAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    with pytest.raises(CheckpointError, match="differ in keys"):
        wise.interpolate(a, {"w": b["w"]}, 0.5)
