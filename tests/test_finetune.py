"""The fine-tuning loops (reference section 8, parity KEEP 10-12, FIX 3, 7, 10) on a tiny DDPM and a tiny CLIP."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from dclip_cli.diffusion.ddim import ddim_step, generate, invert, timestep_tensor
from dclip_cli.diffusion.schedule import alpha_bar, generation_pairs
from dclip_cli.errors import ConfigError, InvalidScheduleError
from dclip_cli.losses.clip import DirectionalCLIPLoss, clip_term
from dclip_cli.losses.identity import IdentityLoss
from dclip_cli.progress import Event
from dclip_cli.store import load_clip
from dclip_cli.textedit import slugify
from dclip_cli.textedit import training_edits as resolve_pairs
from dclip_cli.training import FinetuneConfig, TrainingState, finetune
from tests.support.finetune import TinyFaceNet
from tests.support.tiny import TINY_SIZE, make_tiny_model
from tests.support.tiny_clip import save_tiny_clip

#: a few templates instead of the 79 (the 79-template direction is D's test; here every encode costs CPU time)
SHORT = ("a photo of a {}.", "a sketch of the {}.")
T0, N_INV, N_TRAIN = 200, 4, 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny nets are far faster single-threaded on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip_loss(tmp_path_factory: pytest.TempPathFactory) -> DirectionalCLIPLoss:
    path = save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny.pt")
    return DirectionalCLIPLoss(load_clip(path, device="cpu"), templates=SHORT)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_tiny_model("ddpm", seed=0)


@pytest.fixture(scope="module")
def data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x0 = (torch.rand((3, 3, TINY_SIZE, TINY_SIZE), generator=gen) * 2 - 1) * 0.8
    return x0, invert(model, x0, t0=T0, n_steps=N_INV)


def _config(**kw) -> FinetuneConfig:
    base = {"t0": T0, "n_inv_steps": N_INV, "n_train_steps": N_TRAIN, "n_gen_steps": N_INV, "lr": 2e-3}
    return FinetuneConfig(**{**base, **kw})


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_training_term_decreases_on_a_fixed_pair(model, data, clip_loss) -> None:
    x0, x_lat = data
    epochs: list[float] = []
    cfg = _config(epochs=4, lr_gamma=1.0, batch_size=3)
    finetune(model, x0, x_lat, src_text="cat", trg_text="tiger", clip_loss=clip_loss, config=cfg,
             on_epoch_end=lambda s: epochs.append(s.losses["clip"]))  # fmt: skip
    assert len(epochs) == 4
    assert epochs[-1] < epochs[0] - 0.01, epochs


def test_only_unet_parameters_change(model, data, clip_loss) -> None:
    x0, x_lat = data
    before = _params(model)
    id_loss = IdentityLoss(TinyFaceNet())
    id_before = _params(id_loss)
    clip_before = _params(clip_loss)
    tuned = finetune(model, x0[:1], x_lat[:1], src_text="cat", trg_text="tiger", clip_loss=clip_loss,
                     config=_config(id_weight=0.5, l1_weight=1.0, mode="efficient"), id_loss=id_loss)  # fmt: skip
    # the base is untouched, the copy moved
    after = _params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    tuned_state = tuned.state_dict()
    assert any(not torch.equal(before[k], tuned_state[k]) for k in before)
    assert tuned is not model and not tuned.training
    # CLIP and the identity net are frozen and got no gradients (FIX 10)
    for net, snapshot in ((clip_loss, clip_before), (id_loss, id_before)):
        for name, p in net.named_parameters():
            assert not p.requires_grad and p.grad is None, name
        assert all(torch.equal(snapshot[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in tuned.parameters())


class _CountCalls:
    """Counts UNet calls (and those with autograd on) through a forward hook."""

    def __init__(self, m: nn.Module) -> None:
        self.calls: list[bool] = []
        self.handle = m.unet.register_forward_hook(lambda *a: self.calls.append(torch.is_grad_enabled()))


def test_original_and_efficient_modes_differ_as_specified(model, data, clip_loss) -> None:
    x0, x_lat = data[0][:2], data[1][:2]
    pairs = generation_pairs(T0, N_TRAIN)
    results = {}
    for mode in ("original", "efficient"):
        infos: list[dict] = []
        counter = _CountCalls(model)
        try:
            # the deep copy keeps the base model's hooks, so the copy's UNet calls are counted too
            finetune(model, x0, x_lat, src_text="cat", trg_text="tiger", clip_loss=clip_loss,
                     config=_config(mode=mode, epochs=1, batch_size=1), callback=infos.append)  # fmt: skip
        finally:
            counter.handle.remove()
        results[mode] = (infos, counter.calls)
    # original: N_TRAIN UNet calls with grad per image, one optimizer step per image (section 8.3)
    infos, calls = results["original"]
    assert calls == [True] * (2 * N_TRAIN)
    assert [i["optimizer_step"] for i in infos] == ([False] * (N_TRAIN - 1) + [True]) * 2
    assert [i["losses"] is None for i in infos] == ([True] * (N_TRAIN - 1) + [False]) * 2
    # efficient: one UNet call per optimizer step, N_TRAIN steps per image (section 8.4)
    infos, calls = results["efficient"]
    assert calls == [True] * (2 * N_TRAIN)
    assert [i["optimizer_step"] for i in infos] == [True] * (2 * N_TRAIN)
    assert [(i["image"], i["step"], i["t"], i["t_next"]) for i in infos] == [
        (img, s, t, tn) for img in (0, 1) for s, (t, tn) in enumerate(pairs, start=1)
    ]

    # oracles for the first image (before any update both modes use the base weights):
    # original: the loss is on the final image of the chained generation
    with torch.no_grad():
        x_final = generate(model, x_lat[:1], t0=T0, n_steps=N_TRAIN)
        expected_original = float(clip_term(clip_loss(x0[:1], "cat", x_final, "tiger")))
        # efficient: the first loss is on the one-step x̂₀ at t0
        t, t_next = pairs[0]
        eps = model(x_lat[:1], timestep_tensor(t, x_lat[:1]))
        _, pred_x0 = ddim_step(x_lat[:1], eps, alpha_bar(t), alpha_bar(t_next))
        expected_efficient = float(clip_term(clip_loss(x0[:1], "cat", pred_x0, "tiger")))
    assert results["original"][0][N_TRAIN - 1]["losses"]["clip"] == pytest.approx(expected_original, rel=1e-5)
    assert results["efficient"][0][0]["losses"]["clip"] == pytest.approx(expected_efficient, rel=1e-5)
    assert expected_original != pytest.approx(expected_efficient, rel=1e-3)


def test_efficient_identity_term_has_a_gradient(model, data, clip_loss) -> None:
    """FIX 3: the original computed the ID loss on the detached x_next, so it moved nothing."""
    x0, x_lat = data[0][:1], data[1][:1]
    tuned = finetune(model, x0, x_lat, src_text="cat", trg_text="tiger", clip_loss=clip_loss,
                     config=_config(mode="efficient", clip_weight=0.0, id_weight=1.0),
                     id_loss=IdentityLoss(TinyFaceNet()))  # fmt: skip
    base = model.state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in tuned.state_dict().items())


def test_batches_and_lr_schedule(model, data, clip_loss) -> None:
    x0, x_lat = data
    infos: list[dict] = []
    states: list[TrainingState] = []
    cfg = _config(mode="efficient", epochs=2, batch_size=2, lr=1e-3, n_train_steps=2)
    finetune(model, x0, x_lat, src_text="cat", trg_text="tiger", clip_loss=clip_loss, config=cfg,
             callback=infos.append, on_epoch_end=states.append)  # fmt: skip
    # 3 images in batches of 2 and 1, per epoch; StepLR multiplies the lr by 1.3 after each epoch
    assert [(i["epoch"], i["batch"], i["image"], i["batch_size"]) for i in infos if i["step"] == 1] == [
        (0, 0, 0, 2), (0, 1, 2, 1), (1, 0, 0, 2), (1, 1, 2, 1)
    ]  # fmt: skip
    assert [i["lr"] for i in infos] == pytest.approx([1e-3] * 4 + [1.3e-3] * 4)
    assert [s.epochs_done for s in states] == [1, 2]
    assert set(states[0].losses) == {"clip", "total"}
    assert states[0].losses["total"] == pytest.approx(3 * states[0].losses["clip"], rel=1e-6)


def test_resume_equals_an_uninterrupted_run(model, data, clip_loss) -> None:
    x0, x_lat = data[0][:1], data[1][:1]
    cfg = _config(epochs=2, mode="efficient", n_train_steps=2)
    kw = {"src_text": "cat", "trg_text": "tiger", "clip_loss": clip_loss, "config": cfg}
    saved: list[dict] = []
    straight = finetune(
        model, x0, x_lat, **kw, on_epoch_end=lambda s: saved.append(copy.deepcopy(s.state_dict()))
    )
    resumed = finetune(model, x0, x_lat, **kw, resume=saved[0])
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)


def test_checkpointing_gives_the_same_training_and_is_switched_off_after(model, data, clip_loss) -> None:
    """Gradient checkpointing (issue 6) recomputes activations but changes no number; it is off on the result."""
    x0, x_lat = data
    kw = {"src_text": "cat", "trg_text": "tiger", "clip_loss": clip_loss}
    plain = finetune(model, x0[:2], x_lat[:2], config=_config(checkpointing="off"), **kw)
    ckpt = finetune(model, x0[:2], x_lat[:2], config=_config(checkpointing="on"), **kw)
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
    assert not any(getattr(m, "gradient_checkpointing", False) for m in ckpt.modules())
    before = _params(model)
    assert any(not torch.equal(v, before[k]) for k, v in _params(plain).items())


def test_bf16_training_stays_close_to_fp32_and_keeps_fp32_weights(model, data, clip_loss) -> None:
    x0, x_lat = data
    kw = {"src_text": "cat", "trg_text": "tiger", "clip_loss": clip_loss}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    tuned = {}
    for name in losses:
        tuned[name] = finetune(
            model, x0[:2], x_lat[:2], config=_config(precision=name), **kw,
            callback=lambda info, name=name: info["losses"] and losses[name].append(info["losses"]["total"]),
        )  # fmt: skip
    assert all(p.dtype == torch.float32 for p in tuned["bf16"].parameters())
    assert type(tuned["bf16"]) is type(model)  # the autocast wrapper is not returned
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.05)
    assert losses["bf16"] != losses["fp32"]  # it really ran in bfloat16


def test_interrupt_from_callback_propagates(model, data, clip_loss) -> None:
    x0, x_lat = data[0][:1], data[1][:1]
    before = _params(model)

    def stop(info: dict) -> None:
        if info["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(model, x0, x_lat, src_text="cat", trg_text="tiger", clip_loss=clip_loss,
                 config=_config(mode="efficient"), callback=stop)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        finetune(model, x0, x_lat, src_text="cat", trg_text="tiger", clip_loss=clip_loss,
                 config=_config(), should_stop=lambda: True)  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"mode": "fast"}, ConfigError, "Unknown fine-tuning mode 'fast'"),
        ({"epochs": 0}, ConfigError, "epochs must be a positive integer"),
        ({"batch_size": 0}, ConfigError, "batch size"),
        ({"lr": 0.0}, ConfigError, "learning rate"),
        ({"eta": -1.0}, ConfigError, "eta"),
        ({"l1_weight": -1.0}, ConfigError, "l1 loss weight"),
        ({"clip_weight": 0.0}, ConfigError, "Every loss weight is 0"),
        ({"t0": 1000}, InvalidScheduleError, "t0 = 1000"),
        ({"n_train_steps": 1}, InvalidScheduleError, "at least 2"),
    ],
)
def test_config_validation(kw, error, words) -> None:
    with pytest.raises(error) as info:
        FinetuneConfig(**kw)
    assert words in str(info.value) and info.value.hint


def test_missing_loss_functions_and_bad_inputs(model, data, clip_loss) -> None:
    x0, x_lat = data
    with pytest.raises(ConfigError, match="no identity loss"):
        finetune(
            model, x0, x_lat, src_text="a", trg_text="b", clip_loss=clip_loss, config=_config(id_weight=1.0)
        )
    with pytest.raises(ConfigError, match="differ in shape"):
        finetune(model, x0, x_lat[:2], src_text="a", trg_text="b", clip_loss=clip_loss, config=_config())
    big = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="model works at 16x16"):
        finetune(model, big, big, src_text="a", trg_text="b", clip_loss=clip_loss, config=_config())


def test_config_from_preset_and_pairs() -> None:
    from dclip_cli.presets.manager import get_registry

    face = get_registry().preset("face")
    cfg = FinetuneConfig.from_preset(face, epochs=3, lr=None)
    assert (cfg.t0, cfg.epochs, cfg.lr, cfg.mode) == (face.t0, 3, face.lr, face.finetune_mode)
    with pytest.raises(ConfigError, match="Unknown fine-tuning setting"):
        FinetuneConfig.from_preset(face, learning_rate=1.0)
    assert FinetuneConfig.from_dict({**cfg.to_dict(), "future_field": 1}) == cfg
    pairs = resolve_pairs(
        face, edits=["smiling"], texts=["Angry face!", "angry face"], pairs=[("dog", "cat")]
    )
    assert [(p.key, p.src, p.trg) for p in pairs] == [
        ("smiling", face.edit("smiling").src, face.edit("smiling").trg),
        ("angry_face", face.source_text, "Angry face!"),
        ("angry_face-2", face.source_text, "angry face"),
        ("cat", "dog", "cat"),
    ]
    assert slugify("Gothic  church!") == "gothic_church" and slugify("😀").startswith("edit_")
    with pytest.raises(ConfigError, match="Nothing to fine-tune"):
        resolve_pairs(face)


# --------------------------------------------------------------------------------------------------- run_finetune


@pytest.fixture
def tiny(tmp_path):
    from tests.support.finetune import tiny_preset

    with tiny_preset(tmp_path / "preset") as t:
        yield t


@pytest.fixture(scope="module")
def short_clip_loss(tmp_path_factory: pytest.TempPathFactory) -> DirectionalCLIPLoss:
    path = save_tiny_clip(tmp_path_factory.mktemp("clip32") / "tiny.pt")
    return DirectionalCLIPLoss(load_clip(path, device="cpu"), templates=SHORT)


def _no_partial_files(*roots) -> None:
    for root in roots:
        assert not [p for p in root.rglob("*") if p.name.endswith(".incomplete")], root


def test_run_finetune_end_to_end_and_latent_cache(tiny, tmp_path, short_clip_loss) -> None:
    from dclip_cli.artifacts import load_artifact, read_artifact
    from dclip_cli.checkpoints.cache import library_dir, read_meta
    from dclip_cli.fileio import sha256_file
    from dclip_cli.training import run_finetune

    events: list[Event] = []
    out = tmp_path / "out"
    kw = {"n_samples": 2, "n_preview": 1, "clip_loss": short_clip_loss, "clip_model": "tiny", "device": "cpu"}
    result = run_finetune("tinycat", texts=["tiger cat"], overrides={"epochs": 2}, output=out, library=True,
                          progress=events.append, **kw)  # fmt: skip
    (pair,) = result.pairs
    assert result.base_sha256 == tiny.sha256 and result.base_checkpoint == "tinycat_base"
    assert (result.n_images, result.cache_hits, result.cache_misses) == (2, 0, 3)
    lib = library_dir() / "tinycat" / "tiger_cat.safetensors"
    assert pair.artifacts == [lib, out / "tinycat_tiger_cat_t200.safetensors"]
    assert all(p.is_file() for p in pair.artifacts)
    assert read_meta(lib).sha256 == sha256_file(lib)  # a sidecar like 'dclip models import' writes
    info = read_artifact(lib)
    assert (info.src_text, info.trg_text, info.t0, info.base_sha256) == ("cat", "tiger cat", 200, tiny.sha256)
    assert info.metadata["epochs"] == 2 and info.metadata["n_train_images"] == 2
    assert info.metadata["n_train_steps"] == 2 and info.metadata["mode"] == "original"
    # run folder: previews per epoch, run.json done, resumable state removed after saving
    assert [p.name for p in pair.previews] == ["epoch-001.png", "epoch-002.png"]
    assert all(p.is_file() and p.parent.parent == pair.run_dir for p in pair.previews)
    run = json.loads((pair.run_dir / "run.json").read_text())
    assert run["status"] == "done" and run["epochs_done"] == 2 and len(run["epoch_losses"]) == 2
    assert not (pair.run_dir / "state.pt").exists()
    assert set(pair.losses) == {"clip", "total"} and pair.losses == run["epoch_losses"][-1]
    kinds = [e.kind for e in events]
    assert kinds.count("epoch_end") == 2 and kinds.count("step") == 2 * 2 * 2 and kinds[-1] == "pair_end"
    assert [e.data["phase"] for e in events if e.kind == "progress"][-1] == "invert"
    # the artifact loads on the base it came from and differs from it
    tuned = load_artifact(lib, tiny.model, base_sha256=tiny.sha256)
    assert any(not torch.equal(v, tiny.model.state_dict()[k]) for k, v in tuned.state_dict().items())
    _no_partial_files(tmp_path, library_dir())

    # a second run reuses the inverted latents (training and preview samples)
    assert any(e.message.startswith("Drawing 3 sample") for e in events)
    events.clear()
    again = run_finetune(
        "tinycat", texts=["tiger cat"], output=out, overwrite=True, progress=events.append, **kw
    )
    assert (again.cache_hits, again.cache_misses) == (3, 0)
    assert not any(e.message.startswith("Drawing") for e in events)  # the samples are cached too


def test_interrupt_leaves_no_artifact_then_resume(tiny, tmp_path, short_clip_loss) -> None:
    from dclip_cli.checkpoints.cache import library_dir
    from dclip_cli.errors import OutputExistsError
    from dclip_cli.training import run_finetune

    kw = {"n_samples": 1, "n_preview": 0, "clip_loss": short_clip_loss, "clip_model": "tiny", "device": "cpu",
          "overrides": {"epochs": 2, "mode": "efficient"}, "run_dir": tmp_path / "run"}  # fmt: skip
    target = tmp_path / "tiger.safetensors"

    def interrupt(event: Event) -> None:
        if event.kind == "step" and event.data["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune("tinycat", edits=["tiger"], output=target, progress=interrupt, **kw)
    assert not target.exists() and not (library_dir() / "tinycat").exists()
    _no_partial_files(tmp_path, library_dir())
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["epochs_done"] == 1

    resumed = run_finetune("tinycat", edits=["tiger"], output=target, resume=True, **kw)
    assert resumed.pairs[0].resumed_from == 1 and target.is_file()
    assert resumed.pairs[0].config.t0 == 201  # the named edit's t0
    with pytest.raises(OutputExistsError):  # refused before any work
        run_finetune("tinycat", edits=["tiger"], output=target, **kw)
    straight = run_finetune("tinycat", edits=["tiger"], output=tmp_path / "straight.safetensors", **kw)
    from safetensors.torch import load_file

    a, b = load_file(str(target)), load_file(str(straight.artifacts[0]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_several_pairs_each_from_the_base_and_photos(tiny, tmp_path, short_clip_loss) -> None:
    from PIL import Image
    from safetensors.torch import load_file

    from dclip_cli.training import run_finetune

    photos = tmp_path / "photos"
    photos.mkdir()
    gen = torch.Generator().manual_seed(5)
    for i, size in enumerate([(40, 32), (32, 48)]):
        pixels = (torch.rand((size[1], size[0], 3), generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(photos / f"p{i}.png")
    (photos / "notes.txt").write_text("not an image")
    kw = {
        "images": photos,
        "n_preview": 0,
        "clip_loss": short_clip_loss,
        "clip_model": "tiny",
        "device": "cpu",
    }
    both = run_finetune("tinycat", edits=["tiger"], texts=["dog"], output=tmp_path / "both", **kw)
    assert both.n_images == 2 and [r.pair.key for r in both.pairs] == ["tiger", "dog"]
    assert [p.name for p in both.artifacts] == [
        "tinycat_tiger_t201.safetensors",
        "tinycat_dog_t200.safetensors",
    ]
    alone = run_finetune("tinycat", texts=["dog"], output=tmp_path / "alone", **kw)
    a, b = load_file(str(both.artifacts[1])), load_file(str(alone.artifacts[0]))
    # the second pair started from the base, not from the first pair's weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="names one file"):
        run_finetune("tinycat", edits=["tiger"], texts=["dog"], output=tmp_path / "x.safetensors", **kw)


def test_identity_and_lpips_terms_are_built_only_when_weighted(tmp_path, short_clip_loss) -> None:
    from dclip_cli.artifacts import read_artifact
    from dclip_cli.training import run_finetune
    from tests.support.finetune import tiny_preset

    with tiny_preset(tmp_path / "p", name="tinyface", identity_model="tinyface-face", id_weight=0.5) as t:
        kw = {
            "n_samples": 1,
            "n_preview": 0,
            "clip_loss": short_clip_loss,
            "clip_model": "tiny",
            "device": "cpu",
        }
        result = run_finetune("tinyface", texts=["old cat"], output=tmp_path / "out", **kw)
        assert set(result.pairs[0].losses) == {"clip", "id", "total"}
        assert read_artifact(result.artifacts[0]).metadata["loss_weights"]["id"] == 0.5
        assert t.server.count("/tinyface-face.pt") == 1  # fetched through the checkpoint store
        again = run_finetune(
            "tinyface", texts=["young cat"], output=tmp_path / "out", overrides={"id_weight": 0}, **kw
        )
        assert set(again.pairs[0].losses) == {"clip", "total"}
        assert t.server.count("/tinyface-face.pt") == 1
    with tiny_preset(tmp_path / "q", name="tinynoid") as t:
        with pytest.raises(ConfigError, match="has no identity model"):
            run_finetune("tinynoid", texts=["x"], output=tmp_path / "out", overrides={"id_weight": 1.0}, **kw)


def test_run_with_an_already_loaded_base_model(tiny, tmp_path, short_clip_loss) -> None:
    """The on-the-fly path of `dclip edit`: a loaded base, the fine-tuned model returned in memory."""
    from dclip_cli.training import run_finetune

    kw = {"n_samples": 1, "n_preview": 0, "clip_loss": short_clip_loss, "clip_model": "tiny"}
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    result = run_finetune(tiny.preset, texts=["tiger"], base_model=tiny.model, base_checkpoint="mine",
                          output=tmp_path / "o", return_models=True, **kw)  # fmt: skip
    (pair,) = result.pairs
    assert result.base_checkpoint == "mine" and len(result.base_sha256) == 64  # the weights' hash
    assert pair.model is not None and pair.model is not tiny.model and not pair.model.training
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    with_sha = run_finetune(tiny.preset, texts=["tiger"], base_model=tiny.model, base_sha256=tiny.sha256,
                            output=tmp_path / "p", **kw)  # fmt: skip
    assert with_sha.base_sha256 == tiny.sha256 and with_sha.pairs[0].model is None
