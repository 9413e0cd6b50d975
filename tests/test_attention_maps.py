"""Attention maps (captioner/attention_maps.py): the weights recorded while a caption is replayed are the
decoder's own (each word's sum to 1, the replay reproduces the search's score), recording leaves
generation alone, the figure has one panel per word, and on the built-in scenes a trained model's
shape word looks at the grid cells that hold that shape in the scene's ground truth."""
from __future__ import annotations

import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import attention_maps
from captioner.config import ModelConfig
from captioner.data import shapes
from captioner.data.batches import pad_sequences
from captioner.decoders.attention import ATTENTION_QUERIES
from captioner.model import Captioner
from captioner.rnn.recorder import recording
from captioner.vocab import Vocabulary

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["a", "red", "blue", "circle", "square", "triangle", "left", "of"]


def tiny_model(attention: bool = True, query: str = "previous", seed: int = 0) -> Captioner:
    torch.manual_seed(seed)
    config = ModelConfig(embed_size=16, hidden_size=20, dropout=0.0, attention=attention, attention_query=query)
    return Captioner(config, Vocabulary(WORDS)).eval()


def scene_pixels(model: Captioner, seed: int = 0) -> torch.Tensor:
    noise = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return model.pixels([Image.fromarray(noise)])  # (1, 3, 64, 64)


@pytest.mark.parametrize("query", sorted(ATTENTION_QUERIES))
@pytest.mark.parametrize("beam_size", [1, 3])
def test_each_words_weights_sum_to_one_and_the_replay_is_the_generation(query, beam_size):
    model = tiny_model(query=query)
    pixels = scene_pixels(model)
    generation = model.generate(pixels, replace(model.decoding, beam_size=beam_size, max_length=7))[0]
    trace = attention_maps.trace_attention(model, pixels, generation.token_ids[0], generation.finished[0])
    steps = len(generation.token_ids[0]) + generation.finished[0]
    assert trace.weights.shape == (steps, 4, 4)  # small_cnn: a 4 x 4 map, one map per emitted word (<end> too)
    assert np.allclose(trace.weights.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert (trace.weights >= 0).all()
    assert trace.words[: len(generation.words[0])] == generation.words[0]
    # the replay gives the weights that chose these words: its log-probabilities add up to the search's score
    assert math.isclose(float(np.log(trace.probabilities).sum()), generation.log_probs[0], abs_tol=1e-4)
    assert trace.image.shape == (64, 64, 3) and trace.image.dtype == np.uint8


@pytest.mark.parametrize("query", sorted(ATTENTION_QUERIES))
def test_recording_is_per_thread_and_leaves_generation_unchanged(query):
    model = tiny_model(query=query)
    pixels = torch.cat([scene_pixels(model, seed) for seed in range(3)])  # (3, 3, 64, 64)
    plain = model.generate(pixels, replace(model.decoding, beam_size=2, max_length=6))
    with recording(model.decoder) as recorded:
        watched = model.generate(pixels, replace(model.decoding, beam_size=2, max_length=6))
        with pytest.raises(RuntimeError, match="already recording"):
            with recording(model.decoder):
                pass
    assert [g.token_ids for g in plain] == [g.token_ids for g in watched]
    assert recorded and all(torch.allclose(alpha.sum(dim=-1), torch.ones(alpha.size(0))) for alpha in recorded)
    assert recorded[0].shape == (3, 16)  # the first step: 3 images x 16 regions
    count = len(recorded)
    model.generate(pixels, replace(model.decoding, beam_size=2, max_length=6))  # outside the block: none kept
    assert len(recorded) == count


def test_figure_has_one_panel_per_word_with_its_probability():
    model = tiny_model()
    pixels = scene_pixels(model)
    generation = model.generate(pixels, replace(model.decoding, beam_size=1, max_length=7))[0]
    trace = attention_maps.trace_attention(model, pixels, generation.token_ids[0], generation.finished[0])
    figure = attention_maps.plot_attention(trace, columns=3)
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == [f"{word}  ({p:.2f})" for word, p in zip(trace.words, trace.probabilities)]
    assert any(axis.get_label() == "<colorbar>" for axis in figure.axes)  # one shared colour scale


def test_upsampling_is_smooth_and_keeps_the_peak_in_its_cell():
    weights = np.zeros((4, 4))
    weights[1, 2] = 1.0  # row 1, column 2
    heat = attention_maps.upsample(weights, 64)  # (64, 64)
    row, column = np.unravel_index(heat.argmax(), heat.shape)
    assert 16 <= row < 32 and 32 <= column < 48
    assert heat.min() >= 0 and np.abs(np.diff(heat, axis=1)).max() < 0.2  # no hard cell edges


def test_a_model_without_attention_is_named_not_drawn(tmp_path):
    model = tiny_model(attention=False)
    assert not attention_maps.has_attention(model)
    with pytest.raises(ValueError, match="no attention"):
        attention_maps.trace_attention(model, scene_pixels(model), [1, 2])


def test_saved_figure_is_a_png(tmp_path):
    model = tiny_model(query="current")
    pixels = scene_pixels(model)
    generation = model.generate(pixels, replace(model.decoding, beam_size=1, max_length=5))[0]
    trace = attention_maps.trace_attention(model, pixels, generation.token_ids[0], generation.finished[0])
    attention_maps.save_attention_figure(trace, tmp_path / "map.png")
    with Image.open(tmp_path / "map.png") as image:
        assert image.format == "PNG" and image.width > 300
    assert [path.name for path in tmp_path.iterdir()] == ["map.png"]  # no temporary file left


# --- where a trained model looks, against the scenes' ground truth -------------------------------------------------

GRID = 4  # small_cnn's map on a 64 px scene: cell (row, column) covers pixels [16 row, 16 row + 16) x [16 column, ...)


def render_scenes(seed: int, count: int) -> list[tuple[dict, Image.Image, str]]:
    """Built-in scenes of one or two objects (shapes.py), each with its plain caption ("a small red circle
    to the left of a large blue square"): two objects make the decoder choose where to look."""
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    scenes = []
    while len(scenes) < count:
        scene = shapes.sample_scene(rng, 64)
        if len(scene["objects"]) <= 2:
            scenes.append((scene, shapes.render_scene(scene, noise), shapes.plain_caption(scene)))
    return scenes


def cells_holding(scene: dict, shape: str) -> np.ndarray:
    """(GRID, GRID) bool: the cells that the bounding box of an object of `shape` overlaps."""
    step, mask = 64 / GRID, np.zeros((GRID, GRID), dtype=bool)
    for item in (item for item in scene["objects"] if item["shape"] == shape):
        left, right = item["x"] - item["radius"], item["x"] + item["radius"]
        top, bottom = item["y"] - item["radius"], item["y"] + item["radius"]
        for row in range(GRID):
            for column in range(GRID):
                mask[row, column] = mask[row, column] or (
                    right > column * step and left < (column + 1) * step and bottom > row * step and top < (row + 1) * step)
    return mask


@pytest.fixture(scope="module")
def trained_on_scenes(one_thread) -> Captioner:
    """The default decoder (Xu et al.'s h_{t-1} query), small, trained 300 steps on 1000 scenes (~30 s on one core)."""
    scenes = render_scenes(seed=0, count=1000)
    vocab = Vocabulary.build([caption for _, _, caption in scenes], 1)
    torch.manual_seed(0)
    model = Captioner(ModelConfig(embed_size=32, hidden_size=64, dropout=0.0, attention=True), vocab)
    pixels = model.pixels([image for _, image, _ in scenes])  # (1000, 3, 64, 64)
    captions = pad_sequences([vocab.encode(caption) for _, _, caption in scenes], vocab.pad_id)  # (1000, T)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = torch.randint(0, len(scenes), (32,), generator=order)
        _, loss = model(pixels[batch], captions[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_a_shape_word_looks_at_the_cells_that_hold_that_shape(trained_on_scenes):
    model = trained_on_scenes
    scenes = render_scenes(seed=1, count=150)  # a test batch the model never saw
    pixels = model.pixels([image for _, image, _ in scenes])
    generations = model.generate(pixels, replace(model.decoding, beam_size=1, max_length=16))
    mass: dict[str, list[float]] = {shape: [] for shape in shapes.SHAPES}
    chance: dict[str, list[float]] = {shape: [] for shape in shapes.SHAPES}
    for index, (generation, (scene, _, _)) in enumerate(zip(generations, scenes)):
        trace = attention_maps.trace_attention(model, pixels[index : index + 1], generation.token_ids[0],
                                               generation.finished[0])
        for step, word in enumerate(generation.words[0]):
            held = cells_holding(scene, word) if word in mass else None
            if held is not None and held.any():  # the word names a shape that is in the scene
                mass[word].append(float(trace.weights[step][held].sum()))  # α on those cells
                chance[word].append(float(held.mean()))  # what uniform attention would put there
    assert len(mass["triangle"]) >= 20
    for shape in shapes.SHAPES:
        looked, uniform = float(np.mean(mass[shape])), float(np.mean(chance[shape]))
        assert looked > uniform + 0.1, f"{shape}: {looked:.2f} of the weight on its cells, uniform gives {uniform:.2f}"
    triangle = float(np.mean(mass["triangle"]))
    assert triangle > 0.5, f"'triangle' puts {triangle:.2f} of its weight on the triangles' cells"
