"""Per-person adaptation (edge.adapt), profiles (edge.profiles) and the eval --adapt protocol, on the shipped
models through real ONNX Runtime sessions, with profiles as real files on disk."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.adapt import PersonNorm, adapt_head, population_heads
from edge.backends import open_runner
from edge.card import load_model
from edge.errors import ConfigError, InputError
from edge.evaluation.adaptation import split_enrollment
from edge.paths import data_dir
from edge.profiles import (
    ProfileError,
    build_profile,
    check_person,
    load_profile,
    profile_path,
    read_profile_file,
    save_profile,
)

DEAP = data_dir() / "eeg_deap_bandpower"


def emoedge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parent.parent,
    )


def _forward(model, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    spec = model.card.inputs[0]
    shape = [n if isinstance(d, str) else d for d in spec.shape]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with open_runner(model, backend="onnxruntime", threads=1) as runner:
        return runner.infer({spec.name: x})


@pytest.mark.parametrize(("name", "source"), [("speech", "graph"), ("face", "graph"), ("eeg", "least squares")])
def test_population_head_reproduces_the_model(name: str, source: str) -> None:
    model = load_model(name)
    heads = population_heads(model)
    out = _forward(model, 5, seed=3)
    for output, head in heads.items():
        assert head.source == source
        assert head.weight.shape == (out[output].shape[1], out["embedding"].shape[1])
        np.testing.assert_allclose(head.logits(out["embedding"]), out[output], atol=2e-3, rtol=1e-3)


def _person(rng: np.random.Generator, classes: int, dim: int, per_class: int, spread: float = 0.3):
    """A synthetic person: one cluster per class in the model's embedding space, far from the population's map."""
    centres = rng.standard_normal((classes, dim)) * 2.0
    e = np.concatenate([centres[c] + spread * rng.standard_normal((per_class, dim)) for c in range(classes)])
    y = np.repeat(np.arange(classes), per_class)
    return np.abs(e), y  # embeddings after ReLU are non-negative


def test_adapted_head_beats_the_population_on_a_person_it_does_not_fit() -> None:
    model = load_model("speech")
    head = population_heads(model)["logits"]
    rng = np.random.default_rng(0)
    e, y = _person(rng, len(head.labels), head.weight.shape[1], per_class=12)
    norm = PersonNorm.of(e)  # all of the person's samples, no labels
    enroll, scored = split_enrollment(["p"] * len(y), list(range(len(y))), y, 2)
    a = adapt_head(head, norm, e[enroll], y[enroll])
    assert a.adapted, a.reason
    assert a.counts == dict.fromkeys(head.labels, 2)
    population = (head.logits(e[scored]).argmax(1) == y[scored]).mean()
    adapted = (a.head.logits(e[scored]).argmax(1) == y[scored]).mean()
    assert adapted > population + 0.3, (population, adapted)
    assert a.loo_adapted is not None and a.loo_population is not None and a.loo_adapted > a.loo_population


def test_guard_keeps_the_population_head_when_it_is_already_right() -> None:
    model = load_model("speech")
    head = population_heads(model)["logits"]
    e, _ = _person(np.random.default_rng(1), len(head.labels), head.weight.shape[1], per_class=3)
    y = head.logits(e).argmax(1)  # the population head gets every enrollment example right
    if len(np.unique(y)) < 2:
        y[0] = (y[0] + 1) % len(head.labels)
    a = adapt_head(head, PersonNorm.of(e), e, y)
    assert not a.adapted
    assert a.head is head
    assert "kept the population head" in a.reason and "leave-one-out" in a.reason


def test_one_class_only_is_refused_clearly() -> None:
    model = load_model("eeg")
    head = population_heads(model)["valence_logits"]
    e = np.random.default_rng(2).standard_normal((6, head.weight.shape[1]))
    with pytest.raises(InputError, match="at least 2 classes") as info:
        adapt_head(head, PersonNorm.of(e), e, np.zeros(6, dtype=np.int64))
    assert "valence_logits" in str(info.value) and "negative 6" in str(info.value)


def test_fit_of_one_person_is_well_under_a_second_on_one_core() -> None:
    # speech at K = 4: 32 labelled examples of 384 features, 60 unlabeled; the leave-one-out search included
    model = load_model("speech")
    head = population_heads(model)["logits"]
    e, y = _person(np.random.default_rng(3), len(head.labels), head.weight.shape[1], per_class=4)
    norm = PersonNorm.of(e)
    started = time.perf_counter()
    adapt_head(head, norm, e, y)
    assert time.perf_counter() - started < 1.0


def test_split_enrollment_takes_the_first_k_per_class_in_order() -> None:
    persons = ["a"] * 6 + ["b"] * 4
    order = ["f6", "f1", "f3", "f2", "f5", "f4", "g1", "g2", "g3", "g4"]
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1])
    enroll, scored = split_enrollment(persons, order, labels, 1)
    assert sorted(enroll.tolist()) == [1, 3, 6, 7]  # a: f1 (class 0), f2 (class 1); b: g1, g2
    assert sorted(scored.tolist()) == [0, 2, 4, 5, 8, 9]


# ---- profiles ----


def _profile(model, person: str = "alice"):
    head = population_heads(model)["logits"]
    e, y = _person(np.random.default_rng(4), len(head.labels), head.weight.shape[1], per_class=3)
    return build_profile(model, person, {"logits": (e, y)}, unlabeled=e)


def test_profile_round_trip_on_disk_is_owner_only_and_holds_no_samples(tmp_path: Path) -> None:
    model = load_model("speech")
    profile = _profile(model)
    path = save_profile(profile, tmp_path)
    assert path == tmp_path / "profiles" / "speech" / "alice.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert set(data) == {"format", "person", "model", "model_sha256", "created", "updated", "normalisation", "heads"}
    assert data["model_sha256"] == model.sha256 and data["heads"]["logits"]["counts"]["happy"] == 3
    loaded = load_profile("alice", model, tmp_path)
    head = population_heads(model)["logits"]
    e = np.random.default_rng(5).standard_normal((4, head.weight.shape[1]))
    np.testing.assert_allclose(loaded.head(head).logits(e), profile.head(head).logits(e))
    assert loaded.adapted == profile.adapted


def test_profiles_saved_at_once_land_whole_and_owner_only(tmp_path: Path) -> None:
    """Two enrolments of one person at the same instant (an MQTT enrol and a CLI one): each save lands a whole,
    0600 file and leaves no temporary behind (a fixed NAME.json.tmp let one writer's rename fail)."""
    import threading

    model = load_model("speech")
    profiles = [_profile(model) for _ in range(6)]
    errors: list[BaseException] = []

    def save(k: int) -> None:
        try:
            for _ in range(5):
                save_profile(profiles[k], tmp_path)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(len(profiles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    folder = tmp_path / "profiles" / "speech"
    assert [p.name for p in folder.iterdir()] == ["alice.json"]
    assert stat.S_IMODE((folder / "alice.json").stat().st_mode) == 0o600
    assert load_profile("alice", model, tmp_path).person == "alice"


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 65, "al ice", "bob."])
def test_unsafe_person_names_are_refused(name: str) -> None:
    with pytest.raises(ProfileError, match="not a safe file name"):
        check_person(name)


def test_corrupt_profile_and_profile_of_another_model_are_refused(tmp_path: Path) -> None:
    model = load_model("speech")
    path = save_profile(_profile(model), tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ProfileError, match=r"alice\.json: corrupt profile"):
        load_profile("alice", model, tmp_path)
    data = json.loads(text)
    del data["normalisation"]
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="corrupt profile .missing field 'normalisation'"):
        read_profile_file(path)
    data = json.loads(text)
    data["model_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="another model version"):
        load_profile("alice", model, tmp_path)


def test_profiles_cli_list_show_export_import_delete(tmp_path: Path) -> None:
    model = load_model("speech")
    save_profile(_profile(model, "bob"), tmp_path / "a")
    env = {"EMOEDGE_STATE": str(tmp_path / "a")}
    listed = emoedge("profiles", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [r["person"] for r in json.loads(listed.stdout)] == ["bob"]
    shown = emoedge("profiles", "show", "bob", "--model", "speech", "--json", env=env)
    assert json.loads(shown.stdout)["model_sha256"] == model.sha256
    out = tmp_path / "bob.json"
    assert emoedge("profiles", "export", "bob", "--model", "speech", "--out", str(out), env=env).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    imported = emoedge("profiles", "import", str(out), "--state", str(tmp_path / "b"))
    assert imported.returncode == 0, imported.stderr
    assert profile_path("bob", "speech", tmp_path / "b").is_file()
    data = json.loads(out.read_text())
    data["model_sha256"] = "f" * 64
    out.write_text(json.dumps(data))
    refused = emoedge("profiles", "import", str(out), "--state", str(tmp_path / "c"))
    assert refused.returncode == 2 and "another model version" in refused.stderr
    assert not (tmp_path / "c" / "profiles" / "speech" / "bob.json").exists()
    gone = emoedge("profiles", "delete", "bob", "--model", "speech", env=env)
    assert gone.returncode == 0 and not profile_path("bob", "speech", tmp_path / "a").exists()
    again = emoedge("profiles", "delete", "bob", "--model", "speech", env=env)
    assert again.returncode == 2 and "no profile of 'bob'" in again.stderr


# ---- on real data ----

needs_deap = pytest.mark.skipif(not DEAP.is_dir(), reason=f"{DEAP} not present")


@needs_deap
def test_eval_adapt_protocol_on_held_out_subjects() -> None:
    run = emoedge("eval", "eeg", "--data", str(DEAP), "--adapt", "4", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    info = result["adapt"]
    assert info["k"] == 4 and info["persons"] == ["3", "7", "11", "15", "19", "23"]
    for head in ("valence", "arousal"):
        # each held-out subject enrolls 4 trials of each of the head's 2 classes; the rest are scored
        assert info["enrolled"][head] == 6 * 2 * 4
        assert info["scored"][head] == result[head]["n"] == result["unadapted"][head]["n"]
        assert info["enrolled"][head] + info["scored"][head] == 228
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "confusion"):
            assert key in result[head] and key in result["unadapted"][head]


@needs_deap
def test_adapt_cli_writes_a_profile_and_refuses_bad_input(tmp_path: Path) -> None:
    env = {"EMOEDGE_STATE": str(tmp_path)}
    ok = emoedge("adapt", "eeg", "--person", "3", "--data", str(DEAP), "--k", "4", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "valence_logits" in ok.stdout and "arousal_logits" in ok.stdout
    profile = read_profile_file(tmp_path / "profiles" / "eeg" / "3.json")
    assert profile.heads["valence_logits"].counts == {"negative": 4, "positive": 4}
    assert profile.norm.n == 38  # all of subject 3's trials, unlabeled
    bad = emoedge("adapt", "eeg", "--person", "../3", "--data", str(DEAP), env=env)
    assert bad.returncode == 2 and "not a safe file name" in bad.stderr
    missing = emoedge("adapt", "eeg", "--person", "99", "--data", str(DEAP), env=env)
    assert missing.returncode == 2 and "no samples of person '99'" in missing.stderr


def test_face_folders_without_person_ids_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("happy", "sad"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((48, 48), 40 * i, np.uint8)).save(tmp_path / cls / f"PublicTest_{i}.png")
    run = emoedge("eval", "face", "--data", str(tmp_path), "--adapt", "1")
    assert run.returncode == 2
    assert "carry no person ids" in run.stderr


def test_adapt_k_must_be_positive() -> None:
    from edge.evaluation.adaptation import evaluate_adapted

    with pytest.raises(ConfigError, match="K must be at least 1"):
        evaluate_adapted(None, load_model("eeg"), None, 0)  # type: ignore[arg-type]


def test_enroller_applies_an_adapted_eeg_profile_and_recomputes_va(tmp_path: Path) -> None:
    from edge.enroll import Enroller

    model = load_model("eeg")
    out = _forward(model, 6, seed=7)
    # the model's own va is tanh of half each head's logit difference: the formula process() uses
    for i, key in enumerate(("valence_logits", "arousal_logits")):
        np.testing.assert_allclose(np.tanh((out[key][:, 1] - out[key][:, 0]) / 2), out["va"][:, i], atol=1e-5)
    heads = population_heads(model)
    e = np.concatenate([out["embedding"] + 0.01 * k for k in range(4)])
    y = np.array([0, 1] * (len(e) // 2))
    profile = build_profile(model, "carol", {"valence_logits": (e, y)}, unlabeled=e)
    profile.heads["valence_logits"].adapted = True  # force it: this test is about applying a stored head
    hp = profile.heads["valence_logits"]
    hp.weight = heads["valence_logits"].weight[::-1].copy()  # a head that swaps the classes
    hp.bias = heads["valence_logits"].bias[::-1].copy()
    save_profile(profile, tmp_path)
    enroller = Enroller({"eeg": model}, state=str(tmp_path))
    same, person, adapted = enroller.process("eeg", dict(out), [0.0] * 6)
    assert (person, adapted) == (None, False) and same["va"] is out["va"]
    assert enroller.command({"action": "select", "person": "carol"})["ok"]
    got, person, adapted = enroller.process("eeg", dict(out), [0.0] * 6)
    assert (person, adapted) == ("carol", True)
    np.testing.assert_allclose(got["valence_logits"], out["valence_logits"][:, ::-1], atol=1e-4)
    np.testing.assert_allclose(got["va"][:, 0], -out["va"][:, 0], atol=1e-4)
    np.testing.assert_allclose(got["arousal_logits"], out["arousal_logits"], atol=1e-6)  # not adapted: untouched
    reply = enroller.command(b'{"action": "label", "label": "valence:happy", "seconds": 60, "source": "eeg"}')
    assert not reply["ok"] and "valence:positive" in reply["message"]
    assert enroller.command(b"not json")["ok"] is False
