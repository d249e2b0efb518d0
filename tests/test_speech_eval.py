"""``emoedge eval speech`` across corpora: speaker ids namespaced by corpus, a folder of wav and FLAC with a
labels.csv (file, actor, emotion), scoring among the data's own labels, calibration figures, and fitting
the temperature and the out-of-distribution statistics into a card that the runtime then reads."""

from __future__ import annotations

import csv
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from edge.card import load_card, load_model
from edge.cli import main
from edge.evaluation import speech as S

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000


def _voice(rng: np.random.Generator, seconds: float, f0: float) -> np.ndarray:
    """A crude voiced sound: a harmonic series on a wobbling pitch under a syllable-rate envelope."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    x = sum(np.sin(h * phase) / h for h in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.1 * x + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


def _foreign_corpus(folder: Path, flac: bool = True) -> list[dict[str, str]]:
    """A corpus whose speakers are numbered 03 and 16 (numbers RAVDESS training actors also have), with
    three of the model's emotions, half of the clips as FLAC."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (actor, emotion, f0) in enumerate(
        [(a, e, f) for a in ("03", "16") for e, f in (("angry", 220.0), ("sad", 120.0), ("neutral", 150.0)) for _ in range(2)]
    ):
        audio = _voice(rng, rng.uniform(1.5, 3.5), f0 * rng.uniform(0.9, 1.1))
        if flac and i % 2:
            import soundfile as sf

            name = f"clips/{actor}_{i:02d}.flac"
            (folder / "clips").mkdir(parents=True, exist_ok=True)
            sf.write(str(folder / name), audio, RATE, format="FLAC")
        else:
            name = f"clips/{actor}_{i:02d}.wav"
            _write_wav(folder / name, audio)
        rows.append({"file": name, "actor": actor, "emotion": emotion})
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "actor", "emotion"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture()
def speech_model(tmp_path: Path) -> Path:
    """A copy of the shipped speech model (FP32 and card), so a test can write its card."""
    folder = tmp_path / "models" / "speech"
    folder.mkdir(parents=True)
    shutil.copy2(ROOT / "models" / "speech" / "model.onnx", folder / "model.onnx")
    shutil.copy2(ROOT / "models" / "speech" / "card.toml", folder / "card.toml")
    card = load_card(folder / "card.toml")
    assert 3 in card.training.holdout["train_actors"] and 16 in card.training.holdout["train_actors"]
    return folder


def test_speaker_ids_belong_to_their_corpus(tmp_path: Path, speech_model: Path) -> None:
    card = load_card(speech_model / "card.toml")
    foreign = tmp_path / "emodb_like"
    rows = _foreign_corpus(foreign, flac=False)
    data = S.load_split(card, foreign, "validation")
    assert len(data.labels) == len(rows)  # actors 03 and 16 of another corpus are not RAVDESS's actors 3 and 16
    assert set(data.extra["groups"]) == {"emodb_like:3", "emodb_like:16"}
    with pytest.raises(Exception, match="no clips of split 'train'"):
        S.load_split(card, foreign, "train")
    # RAVDESS-named files are RAVDESS's actors: 03 trained on, 05 held out
    ravdess = tmp_path / "ravdess_copy"
    rng = np.random.default_rng(1)
    for actor in ("03", "05"):
        _write_wav(ravdess / f"Actor_{actor}" / f"03-01-05-01-01-01-{actor}.wav", _voice(rng, 2.0, 200.0))
    held = S.load_split(card, ravdess, "validation")
    assert held.extra["groups"] == ["ravdess:5"]
    assert S.load_split(card, ravdess, "train").extra["groups"] == ["ravdess:3"]


def test_two_corpora_are_one_validation_set(tmp_path: Path, speech_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--data A,B``: a model of several corpora is calibrated and scored on the held-out speakers of each at once."""
    card = load_card(speech_model / "card.toml")
    first, second = tmp_path / "first", tmp_path / "second"
    rows = _foreign_corpus(first, flac=False) + _foreign_corpus(second, flac=False)
    a, b = S.load_split(card, first, "validation"), S.load_split(card, second, "validation")
    both = S.load_split(card, f"{first},{second}", "validation")  # type: ignore[arg-type]  # the CLI passes a string
    assert len(both.labels) == len(rows) and len(both) == len(a) + len(b)
    assert both.extra["clips"] == len(rows) and int(both.extra["owner"].max()) == len(rows) - 1
    assert np.array_equal(both.extra["owner"][len(a):], b.extra["owner"] + a.extra["clips"])
    assert set(both.extra["groups"]) == {"first:3", "first:16", "second:3", "second:16"}  # speakers stay in their corpus
    assert both.description.startswith("first+second: first: split validation")
    assert main(["eval", str(speech_model), "--data", f"{first},{second}", "--fit-temperature", "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == len(rows) and result["fit"]["folds"] == 4  # cross-fitted over both corpora's speakers


def test_eval_on_a_folder_of_wav_and_flac_with_restricted_labels_and_calibration(
    tmp_path: Path, speech_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "corpus"
    rows = _foreign_corpus(foreign)
    argv = ["eval", str(speech_model), "--data", str(foreign), "--restrict-to-data-labels", "--json", "--threads", "1"]
    shipped = load_card(speech_model / "card.toml").temperature("logits")
    assert main([*argv, "--fit-temperature", "--write-card"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert next(iter(result)) == "balanced_accuracy" and result["n"] == len(rows) and result["skipped"] == 0
    assert 0 <= result["ece"] <= 1 and 1 / 8 <= result["mean_confidence"] <= 1 and result["temperature"] == shipped
    restricted = result["restricted"]
    assert restricted["labels"] == ["neutral", "sad", "angry"] and restricted["n"] == len(rows)
    assert restricted["accuracy"] >= result["accuracy"]  # fewer classes to be wrong among
    assert sum(map(sum, restricted["confusion"])) == len(rows)
    fitted = result["fit"]["temperature"]
    assert result["fit"]["folds"] == 2  # one fold per speaker
    card = load_card(speech_model / "card.toml")
    assert card.confidence is not None and card.confidence.temperatures["logits"] == pytest.approx(fitted)
    assert any(m.data.startswith("corpus:") for m in card.metrics)
    assert any(m.data.startswith("ravdess_speech_16k:") for m in card.metrics)  # the other corpus's record kept
    # the next run, and the runtime, use the fitted temperature
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["temperature"] == pytest.approx(fitted)
    assert again["uncalibrated"]["mean_confidence"] == pytest.approx(result["uncalibrated"]["mean_confidence"])
    assert again["mean_confidence"] != pytest.approx(result["mean_confidence"])
    from edge.pipeline.readout import OutputReader

    assert OutputReader(load_model(speech_model).card).temperatures["logits"] == pytest.approx(fitted)


def test_fit_ood_writes_statistics_that_flag_noise(tmp_path: Path, speech_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.evaluation.outliers import noise_clip, tone_clip

    rng = np.random.default_rng(2)
    data = tmp_path / "ravdess_like"
    for actor in ("01", "02", "05", "10"):  # 01 and 02 trained on (the train split), 05 and 10 held out
        for emotion, f0 in (("01", 150.0), ("03", 230.0), ("04", 110.0), ("05", 250.0)):
            for rep in ("01", "02"):
                name = f"03-01-{emotion}-01-01-{rep}-{actor}.wav"
                _write_wav(data / f"Actor_{actor}" / name, _voice(rng, rng.uniform(2.0, 3.0), f0 * rng.uniform(0.85, 1.15)))
    outliers = tmp_path / "outliers"
    for kind, make in (("noise", noise_clip), ("tones", tone_clip)):
        for i in range(6):
            _write_wav(outliers / kind / f"{i}.wav", make(rng))
    argv = ["eval", str(speech_model), "--data", str(data), "--ood", str(outliers), "--json", "--threads", "1"]
    assert main([*argv, "--fit-ood", "--write-card"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ood_auroc_by_kind"]) == {"noise", "tones"} and result["ood_n"]["inliers"] >= 16
    assert result["ood_flagged"]["inliers"] <= 0.1
    card = load_card(speech_model / "card.toml")
    assert card.ood is not None and len(card.ood.projection) == card.ood.components
    assert card.ood.threshold == pytest.approx(result["ood_threshold"])
    assert main(argv) == 0  # scored with the card's statistics now
    again = json.loads(capsys.readouterr().out)
    assert again["ood_auroc"] == pytest.approx(result["ood_auroc"], abs=0.02)
    assert again["ood_flagged"]["noise"] >= 0.5
    # --ood-inliers: another folder's held-out split joins the threshold's inliers (and the card says so)
    assert main([*argv, "--ood-inliers", str(data)]) == 2 and "only applies with --fit-ood" in capsys.readouterr().err
    assert main([*argv, "--fit-ood", "--ood-inliers", str(data), "--write-card"]) == 0
    capsys.readouterr()
    pooled = load_card(speech_model / "card.toml").ood
    assert pooled is not None and pooled.data.count("ravdess_like") >= 3  # statistics + threshold on two held-out sets
    assert pooled.threshold == pytest.approx(card.ood.threshold, rel=0.2)  # the same samples twice: the same 95%


def test_loudness_normalisation_is_the_same_in_eval_and_at_run_time() -> None:
    from edge.card import FeatureRecipe, ModelCard
    from edge.features import speech as F
    from edge.features.recipes import build_features

    rng = np.random.default_rng(3)
    audio = _voice(rng, 3.0, 180.0)
    quiet, loud = F.windows(F.log_mel(audio * 0.2)), F.windows(F.log_mel(audio))
    # gain (-14 dB) no longer moves the input where the power is well above the log floor
    above = quiet > F.SILENCE + 6
    assert above.mean() > 0.25
    assert np.abs(F.normalise_loudness(quiet) - F.normalise_loudness(loud))[above].max() < 0.05
    # and padding stays digital silence
    assert np.abs(F.normalise_loudness(loud) - loud).max() > 1.0
    short = F.windows(F.log_mel(audio[:16000]))
    assert (F.normalise_loudness(short)[..., -50:] == F.SILENCE).all()
    mean, std = np.zeros(F.N_MELS, np.float32), np.ones(F.N_MELS, np.float32)
    card = ModelCard.model_validate(load_card(ROOT / "models" / "speech" / "card.toml").model_dump())
    card.features = FeatureRecipe(recipe=card.features.recipe, params={
        **card.features.params, "population_mean": mean.tolist(), "population_std": std.tolist(), "loudness_norm": True})
    runtime = build_features(card, (1, F.N_MELS, F.WINDOW_FRAMES))(audio[: 3 * RATE], float(RATE), None)
    offline = F.model_windows(audio[: 3 * RATE], RATE, mean, std, loudness_norm=True)[-1]
    np.testing.assert_allclose(runtime, offline, atol=1e-5)


def test_device_augmentation_changes_the_spectrum_but_keeps_it_finite() -> None:
    pytest.importorskip("torch")
    from edge.features import speech as F
    from edge.zoo.speech_augment import device_augment

    rng = np.random.default_rng(4)
    mel = F.windows(F.log_mel(_voice(rng, 3.0, 150.0)))[0]
    out = device_augment(mel, rng, 1.0)
    assert out.shape == mel.shape and np.isfinite(out).all()
    assert np.abs(out - mel).mean() > 0.1


@pytest.mark.slow
def test_training_on_two_corpora_masks_and_namespaces_their_speakers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    ravdess = tmp_path / "ravdess_like"
    for actor in ("01", "05"):
        for emotion, f0 in (("01", 150.0), ("02", 170.0), ("05", 250.0)):
            _write_wav(ravdess / f"Actor_{actor}" / f"03-01-{emotion}-01-01-01-{actor}.wav", _voice(rng, 2.0, f0))
    foreign = tmp_path / "other"
    _foreign_corpus(foreign, flac=False)  # speakers 03 and 16: neutral, sad, angry (no calm)
    out = tmp_path / "model"
    assert main(["train", "speech", "--data", str(ravdess), "--out", str(out), "--threads", "1", "--no-progress",
                 "--max-steps", "2", "--set", f"extra_data={foreign}", "--set", "holdout_every=2",
                 "--set", "loudness_norm=true", "--set", "device_aug_p=0.5"]) == 0
    card = load_card(out / "card.toml")
    assert card.features.params["loudness_norm"] is True
    assert set(card.training.holdout["train_speakers"]) == {"ravdess:1", "other:3"}  # other:16 held out
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(foreign), "--json", "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6 and "other speakers ['16']" in result["data"]
