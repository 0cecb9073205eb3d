"""The two apps end to end from the shipped weights (no retraining): style transfer and the
Tang quatrain generator, on this machine and (one poem) on the emulated phone."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("PIL")

from apps.poem import PoemOptions, compose, load_model, write_poem_eager  # noqa: E402
from apps.poem.model import LSTMStep  # noqa: E402
from apps.poem.stepper import stepper_for  # noqa: E402
from apps.runtime import Placement, open_runner  # noqa: E402
from apps.style_transfer import StyleOptions  # noqa: E402
from apps.style_transfer.data import read_image  # noqa: E402
from apps.style_transfer.model import load_transformer  # noqa: E402
from apps.style_transfer.stylize import fit, stylize_eager, stylize_file, to_tensor  # noqa: E402
from apps.style_transfer.train import EXAMPLES  # noqa: E402
from mdl_tvm import cli  # noqa: E402

PHOTO = EXAMPLES / "chelsea.png"


@pytest.fixture(scope="module")
def poem_model():
    net, vocab = load_model()
    step = LSTMStep(net).eval()
    h, c = step.zero_state()
    return step, vocab, (h, c)


@pytest.fixture(scope="module")
def host_step(poem_model):
    step, _, (h, c) = poem_model
    example = (torch.zeros(1, dtype=torch.int64), torch.from_numpy(h), torch.from_numpy(c))
    with open_runner(step, example, Placement()) as runner:
        yield runner


def check_quatrain(poem: str, first: str, n: int) -> None:
    lines = poem.split("\n")
    assert len(lines) == 4
    assert [len(line) for line in lines] == [n + 1] * 4
    assert [line[-1] for line in lines] == ["，", "。", "，", "。"]
    assert poem[0] == first
    chars = [ch for line in lines for ch in line[:-1]]
    assert len(set(chars)) == len(chars)  # no character twice
    assert not set(chars) & set("^$，。")


def test_poem_host_is_deterministic_and_matches_eager(poem_model, host_step):
    """State in the zero-copy executor's preset buffers; the same poem as plain runs (state
    passed in and out) and as PyTorch eager."""
    _, vocab, state = poem_model
    stepper = stepper_for(host_step)
    assert stepper.kind == "zero-copy"
    first = compose("春", stepper, vocab, state, PoemOptions(seed=7))
    again = compose("春", stepper, vocab, state, PoemOptions(seed=7))
    other = compose("春", stepper, vocab, state, PoemOptions(seed=8))
    check_quatrain(first, "春", 5)
    check_quatrain(other, "春", 5)
    assert first == again
    assert first != other
    assert first == compose("春", host_step.run, vocab, state, PoemOptions(seed=7))
    assert first == write_poem_eager("春", PoemOptions(seed=7))


def test_poem_seven_character_lines(poem_model, host_step):
    _, vocab, state = poem_model
    poem = compose("月", host_step.run, vocab, state, PoemOptions(line_length=7, seed=1))
    check_quatrain(poem, "月", 7)


def test_poem_step_matches_pytorch(poem_model, host_step):
    step, vocab, (h, c) = poem_model
    token = np.array([vocab.index("山")], np.int64)
    ours = host_step.run(token, h + 0.1, c - 0.1)
    with torch.no_grad():
        ref = step(*(torch.from_numpy(a) for a in (token, h + 0.1, c - 0.1)))
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", ["龘", "^", "春风", ""])
def test_poem_unknown_start_character(poem_model, host_step, bad):
    _, vocab, state = poem_model
    with pytest.raises(ValueError, match="start character|one start character") as err:
        compose(bad, host_step.run, vocab, state)
    if len(bad) == 1:
        assert "--list-chars" in str(err.value)


def test_poem_cli(capsys):
    assert cli.main(["app", "poem", "花", "--seed", "3"]) == 0
    check_quatrain(capsys.readouterr().out.strip(), "花", 5)
    assert cli.main(["app", "poem", "龘"]) == 2
    assert "--list-chars" in capsys.readouterr().err
    assert cli.main(["app", "poem", "--list-chars"]) == 0
    assert "春" in capsys.readouterr().out
    assert cli.main(["app", "poem", "春", "--target", "arm64"]) == 2
    assert "--tracker" in capsys.readouterr().err


def test_style_host_matches_eager_and_is_deterministic():
    """The style network compiled for the host as `stylize` compiles it (`open_runner`)
    against PyTorch, and three runs give the same bits (a scratch buffer shared by the
    threads once made them vary). `stylize` itself runs in the CLI test below."""
    image = read_image(PHOTO)
    options = StyleOptions(size=64)
    small = fit(image, options.size)
    x = to_tensor(small)
    with open_runner(load_transformer(), (torch.from_numpy(x),), Placement()) as runner:
        runs = [runner.run(x)[0][0].transpose(1, 2, 0) for _ in range(3)]
    ours = runs[0]
    assert ours.shape == small.shape and max(ours.shape) == 64 and ours.dtype == np.float32
    for again in runs[1:]:
        np.testing.assert_array_equal(again, ours)
    np.testing.assert_allclose(ours, stylize_eager(image, options), atol=1e-4)
    assert 0.0 <= ours.min() and ours.max() <= 1.0
    assert np.abs(ours - small).mean() > 0.02  # it changed the picture


@pytest.mark.filterwarnings("ignore:channel group")
def test_style_cli_writes_image_and_compresses(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "cat.png"
    assert cli.main(["app", "style", str(PHOTO), "-o", str(out), "--size", "48",
                     "--compress", "kmeans:0.5"]) == 0
    assert "kmeans:0.5" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == fit(read_image(PHOTO), 48).shape[1::-1] and img.mode == "RGB"


def test_style_bad_paths(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no image file"):
        stylize_file(tmp_path / "missing.jpg", tmp_path / "out.png")
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        stylize_file(not_image, tmp_path / "out.png")
    with pytest.raises(ValueError, match="image suffix"):
        stylize_file(PHOTO, tmp_path / "out.txt")
    assert cli.main(["app", "style", str(tmp_path / "missing.jpg"), "-o",
                     str(tmp_path / "o.png")]) == 2
    assert "no image file" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.phone
def test_poem_on_phone_matches_host(phone, poem_model, host_step):
    """The compiled LSTM step runs on the emulated arm64 phone over RPC, the state kept in
    device buffers between steps; it writes the same poem as this machine."""
    step, vocab, state = poem_model
    h, c = state
    example = (torch.zeros(1, dtype=torch.int64), torch.from_numpy(h), torch.from_numpy(c))
    tracker = f"{phone['tracker'][0]}:{phone['tracker'][1]}"
    placement = Placement(target="arm64", tracker=tracker, key=phone["key"])
    with open_runner(step, example, placement) as runner:
        assert runner.remote is not None and runner.library.suffix == ".so"
        stepper = stepper_for(runner)  # h, c stay in device buffers between characters
        assert stepper.kind == "zero-copy (device buffers)"
        poem = compose("山", stepper, vocab, state, PoemOptions(seed=5))
    check_quatrain(poem, "山", 5)
    assert poem == compose("山", host_step.run, vocab, state, PoemOptions(seed=5))
