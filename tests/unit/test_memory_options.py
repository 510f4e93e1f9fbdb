"""Memory options of the Distiller: gradient accumulation, gradient checkpointing, fused AdamW, LoRA adapters,
and conditions that are dicts of tensors (SDXL-style) through the core."""

import copy
import logging

import pytest
import torch
from onestep.distill.checkpoint import latest_checkpoint
from onestep.distill.conditions import slice_rows, take_rows
from onestep.distill.lora import adapter_parameter_count, add_lora_adapters, merged_copy
from onestep.distill.losses import drop_prompts
from onestep.distill.memory import adam, checkpoint_blocks
from onestep.distill.networks import EDMDenoiser
from onestep.distill.training import DistillConfig, Distiller
from safetensors.torch import load_file
from training_helpers import TinyDenoiser, config

EDM_SHAPE = (1, 8, 8)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_edm(seed=0):
    torch.manual_seed(seed)
    network = EDMDenoiser(channels=(8, 16), blocks=1, emb_dim=16)
    with torch.no_grad():  # the output layer starts at zero: perturb it so that gradients reach every layer
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network


def edm_config(**overrides):
    defaults = dict(steps=2, batch_size=4, sample_shape=EDM_SHAPE, lr_generator=1e-3, lr_fake_score=1e-3, seed=5,
                    keep_checkpoints=None)
    return DistillConfig(**(defaults | overrides))


LABELS = torch.arange(10)


def edm_distiller(cfg, **kw):
    return Distiller(tiny_edm(), cfg, cond_sampler=lambda n, g: LABELS[torch.randint(10, (n,), generator=g)],
                     uncond=torch.tensor([10]), **kw)


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("method", ["sid", "sid-lsg"])
def test_accumulating_two_micro_batches_equals_one_double_batch(method):
    lsg = dict(k_train_fake=1.5, k_eval_fake=1.5, k_eval_real=2.0) if method == "sid-lsg" else {}
    conds = dict(cond_sampler=lambda n, g: torch.randn(n, 2, generator=g), uncond=torch.zeros(1, 2))
    torch.manual_seed(0)
    whole = Distiller(TinyDenoiser(), config(method=method, batch_size=8, steps=3, **lsg), **conds)
    torch.manual_seed(0)
    accumulated = Distiller(TinyDenoiser(), config(method=method, batch_size=4, grad_accumulation=2, steps=3, **lsg),
                            **conds)
    for a, b in zip(whole.train(), accumulated.train(), strict=True):
        assert a["fake_score"] == pytest.approx(b["fake_score"], rel=1e-5)
        assert a["generator"] == pytest.approx(b["generator"], rel=1e-4, abs=1e-7)
    assert accumulated.cur_nimg == whole.cur_nimg == 24
    assert max_difference(whole.generator, accumulated.generator) < 1e-5
    assert max_difference(whole.ema.module, accumulated.ema.module) < 1e-5


def test_checkpoint_blocks_recomputes_blocks_and_keeps_loss_and_gradients():
    plain, checkpointed = tiny_edm(), tiny_edm()
    checkpoint_blocks(checkpointed, checkpointed.checkpointable_blocks())
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    calls = []
    first_block = checkpointed.checkpointable_blocks()[0]
    first_block.conv1.register_forward_pre_hook(lambda module, args: calls.append(1))
    x, sigma, labels = torch.randn(3, *EDM_SHAPE), torch.tensor([0.5, 2.0, 10.0]), torch.tensor([0, 3, 10])
    losses = []
    for network in (plain, checkpointed):
        loss = network(x, sigma, labels).square().sum()
        loss.backward()
        losses.append(loss.item())
    assert len(calls) == 2, "the first block's layers ran again in backward"
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="not a submodule"):
        checkpoint_blocks(plain, [torch.nn.Linear(1, 1)])


def test_gradient_checkpointing_leaves_a_distillation_run_unchanged():
    runs = [edm_distiller(edm_config(gradient_checkpointing=flag)) for flag in (False, True)]
    histories = [run.train() for run in runs]
    for a, b in zip(*histories):
        assert a["fake_score"] == pytest.approx(b["fake_score"], rel=1e-5)
        assert a["generator"] == pytest.approx(b["generator"], rel=1e-4, abs=1e-7)
    assert max_difference(runs[0].generator, runs[1].generator) < 1e-5


def test_fused_adamw_is_adam_with_decoupled_decay_zero(caplog):
    def one_step(optimizer_factory):
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 3)
        optimizer = optimizer_factory(layer.parameters())
        for _ in range(3):
            optimizer.zero_grad()
            layer(torch.randn(5, 4)).square().sum().backward()
            optimizer.step()
        return optimizer, layer

    settings = dict(lr=1e-2, betas=(0.0, 0.999), eps=1e-8)
    plain_opt, plain = one_step(lambda p: adam(p, fused=False, **settings))
    fused_opt, fused = one_step(lambda p: adam(p, fused=True, **settings))
    assert type(plain_opt) is torch.optim.Adam
    assert type(fused_opt) is torch.optim.AdamW and fused_opt.defaults["fused"]
    assert fused_opt.defaults["weight_decay"] == 0.0 and fused_opt.defaults["betas"] == (0.0, 0.999)
    assert max_difference(plain, fused) < 1e-6

    class NoFusedKernel(torch.optim.AdamW):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on a supported device")
            super().__init__(params, **kw)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(torch.optim, "AdamW", NoFusedKernel)
        fallback = adam(torch.nn.Linear(2, 2).parameters(), fused=True, **settings)
    assert not fallback.defaults["fused"] and "fused AdamW is not supported here" in caplog.text

    distiller = edm_distiller(edm_config(fused_adamw=True))
    assert all(opt.defaults["fused"] for opt in (distiller.opt_generator, distiller.opt_fake_score))
    distiller.train_step()


def optimized_parameters(optimizer):
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def assert_teacher_untouched(distiller, before):
    teacher = distiller.teacher
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    for optimizer in (distiller.opt_generator, distiller.opt_fake_score):
        assert not teacher_ids & optimized_parameters(optimizer)
        assert not teacher_ids & {id(p) for p in optimizer.state}
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_only_the_students_train_and_with_lora_only_their_adapters(lora_rank):
    distiller = edm_distiller(edm_config(lora_rank=lora_rank))
    teacher_before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    students_before = {name: {k: v.clone() for k, v in getattr(distiller, name).state_dict().items()}
                       for name in ("generator", "fake_score")}
    distiller.train()

    assert_teacher_untouched(distiller, teacher_before)
    for name, optimizer in (("generator", distiller.opt_generator), ("fake_score", distiller.opt_fake_score)):
        network = getattr(distiller, name)
        trained = {n for n, p in network.named_parameters() if id(p) in optimized_parameters(optimizer)}
        changed = {n for n, v in network.state_dict().items() if not torch.equal(v, students_before[name][n])}
        if lora_rank:
            assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained), name
            assert {n for n, p in network.named_parameters() if p.requires_grad} <= trained
            assert changed and changed <= trained, "base weights stay frozen"
        else:
            assert trained == {n for n, _ in network.named_parameters()}
            assert changed


def storage_bytes(*modules):
    """Bytes of the distinct parameter storages the modules hold between them."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for m in modules for p in m.parameters()}
    return sum(storages.values())


def test_lora_students_and_their_ema_share_the_teachers_weights_and_train_as_copies_would(tmp_path):
    shared = edm_distiller(edm_config(lora_rank=2, steps=3))
    network_bytes = storage_bytes(shared.teacher)
    adapters = sum(p.numel() * p.element_size() for n, p in shared.generator.named_parameters() if ".lora_" in n)
    assert adapters == 4 * adapter_parameter_count(tiny_edm(), rank=2)  # float32
    held = storage_bytes(shared.teacher, shared.generator, shared.fake_score, shared.ema.module)
    assert held == network_bytes + 3 * adapters, "one network for all four, plus adapters (generator, fake, EMA)"
    teacher_before = {k: v.clone() for k, v in shared.teacher.state_dict().items()}

    teacher = tiny_edm()
    copied = Distiller(teacher, edm_config(lora_rank=2, steps=3), generator=copy.deepcopy(teacher),
                       fake_score=copy.deepcopy(teacher), cond_sampler=shared.cond_sampler, uncond=shared.uncond)
    assert storage_bytes(copied.teacher, copied.generator, copied.fake_score, copied.ema.module) > 3 * network_bytes
    assert shared.train(run_dir=tmp_path) == copied.train()
    assert_teacher_untouched(shared, teacher_before)
    assert max_difference(shared.ema.module, copied.ema.module) == 0.0
    assert max_difference(merged_copy(shared.generator), merged_copy(copied.generator)) == 0.0

    resumed = edm_distiller(edm_config(lora_rank=2, steps=3))
    resumed.resume(tmp_path)
    assert max_difference(resumed.ema.module, shared.ema.module) == 0.0
    assert storage_bytes(resumed.teacher, resumed.generator, resumed.fake_score, resumed.ema.module) == held


def test_lora_checkpoints_hold_the_adapters_and_resume_exactly(tmp_path):
    uninterrupted = edm_distiller(edm_config(lora_rank=2, steps=4)).train()
    edm_distiller(edm_config(lora_rank=2, steps=2)).train(run_dir=tmp_path)
    saved = load_file(latest_checkpoint(tmp_path) / "generator.safetensors")
    assert saved and all(".lora_A." in key or ".lora_B." in key for key in saved), sorted(saved)[:3]

    for separate_copies in (False, True):  # shared base weights, or the students' own (as under FSDP)
        teacher = tiny_edm()
        students = dict(generator=copy.deepcopy(teacher), fake_score=copy.deepcopy(teacher)) if separate_copies else {}
        resumed = Distiller(teacher, edm_config(lora_rank=2, steps=4), **students,
                            cond_sampler=lambda n, g: LABELS[torch.randint(10, (n,), generator=g)],
                            uncond=torch.tensor([10]))
        resumed.resume(tmp_path)
        assert resumed.train() == uninterrupted[2:]


def test_merged_lora_copy_is_the_plain_network_with_the_adapters_output():
    network = add_lora_adapters(tiny_edm(), rank=2)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if ".lora_B." in name:  # zero-initialised: give the adapters an effect
                parameter.normal_(0.0, 0.1)
    merged = merged_copy(network)
    assert merged.state_dict().keys() == tiny_edm().state_dict().keys()
    x, sigma, labels = torch.randn(2, *EDM_SHAPE), torch.tensor([1.0, 4.0]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(merged(x, sigma, labels), network(x, sigma, labels), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tiny_edm()(x, sigma, labels), network(x, sigma, labels))


def test_dict_conditions_are_drawn_sliced_and_dropped_row_by_row():
    cond = {"c_crossattn": torch.arange(6.0).reshape(6, 1, 1).expand(6, 3, 2), "y": torch.arange(6.0)[:, None] + 10}
    assert torch.equal(slice_rows(cond, 2, 4)["y"], torch.tensor([[12.0], [13.0]]))
    assert torch.equal(take_rows(cond, torch.tensor([5, 0]))["c_crossattn"][:, 0, 0], torch.tensor([5.0, 0.0]))
    uncond = {"c_crossattn": torch.full((1, 3, 2), -1.0), "y": torch.full((1, 1), -1.0)}
    dropped = drop_prompts(cond, uncond, 0.5, torch.Generator().manual_seed(1))
    from_text = (dropped["c_crossattn"] == -1).all(dim=(1, 2))
    assert torch.equal(from_text, (dropped["y"] == -1).all(dim=1)) and 0 < from_text.sum() < 6
    tensor_only = drop_prompts(cond["y"], uncond["y"], 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(tensor_only, dropped["y"]), "a tensor condition drops the same rows as before"


class DictConditioned(TinyDenoiser):
    """TinyDenoiser taking {"a": [B, 1], "b": [B, 1]} as its two condition features."""

    def forward(self, x, sigma, cond=None):
        features = None if cond is None else torch.cat([cond["a"].expand(x.shape[0], -1),
                                                         cond["b"].expand(x.shape[0], -1)], dim=1)
        return super().forward(x, sigma, features)


def test_dict_conditions_train_like_the_same_tensor_conditions():
    def tensor_sampler(n, g):
        return torch.randn(n, 2, generator=g)

    def dict_sampler(n, g):
        drawn = tensor_sampler(n, g)
        return {"a": drawn[:, :1], "b": drawn[:, 1:]}

    lsg = config(method="sid-lsg", k_train_fake=1.5, k_eval_fake=1.5, k_eval_real=2.0, steps=3)
    torch.manual_seed(0)
    as_tensors = Distiller(TinyDenoiser(), lsg, cond_sampler=tensor_sampler, uncond=torch.zeros(1, 2)).train()
    torch.manual_seed(0)
    as_dicts = Distiller(DictConditioned(), lsg, cond_sampler=dict_sampler,
                         uncond={"a": torch.zeros(1, 1), "b": torch.zeros(1, 1)}).train()
    assert as_dicts == as_tensors
