"""The seed experiments: truncated BPTT (state crosses chunk boundaries, gradients do not), gradient-flow
measurements checked against an independent autograd path, the table arithmetic, and both commands
end to end on tiny budgets (`--quick` plus smaller overrides)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from captioner.experiments import cells as cells_experiment
from captioner.experiments.__main__ import main
from captioner.experiments.gradients import GradientBudget, RecallModel, gradient_flow, raise_carry_bias, recall_batch
from captioner.experiments.tbptt import train_truncated
from captioner.rnn.cells import CELLS
from captioner.rnn.recorder import recording
from captioner.rnn.stacked import StackedLSTM

TINY_FLOW = GradientBudget(hidden_size=16, delay=3, flow_length=25, flow_batches=1, batch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_truncated_bptt_carries_state_but_not_gradients(cell):
    torch.manual_seed(0)
    model = StackedLSTM(3, 5, num_layers=2, cell=cell)
    sequence = torch.randn(2, 10, 3, requires_grad=True)
    full_output, (full_h, full_c) = model(sequence)
    outputs = []

    def last_chunk_only(output, positions):  # the loss sits in the last chunk (steps 8, 9) only
        outputs.append(output.detach())
        return output.sum() if positions.start == 8 else output.sum() * 0

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: outputs must equal full_output
    steps, (h, c) = train_truncated(model, sequence, 4, last_chunk_only, optimizer)
    assert [(step.start, step.length) for step in steps] == [(0, 4), (4, 4), (8, 2)]
    assert torch.allclose(torch.cat(outputs, dim=1), full_output, atol=1e-6)  # the state crossed both boundaries
    assert torch.allclose(h, full_h, atol=1e-6) and torch.allclose(c, full_c, atol=1e-6) and not h.requires_grad
    assert sequence.grad[:, :8].abs().sum() == 0 and sequence.grad[:, 8:].abs().sum() > 0  # gradients did not
    sequence.grad = None
    train_truncated(model, sequence, 10, lambda output, positions: output[:, 8:].sum(), optimizer)
    assert sequence.grad[:, :8].abs().sum() > 0  # one chunk of 10: the same loss does reach the early steps


def test_clipping_is_measured_and_applied():
    torch.manual_seed(0)
    model = StackedLSTM(3, 4, cell="rnn")
    sequence = torch.randn(2, 6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    steps, _ = train_truncated(model, sequence, 3, lambda output, positions: 1000 * output.sum(), optimizer, grad_clip=0.5)
    for step in steps:
        assert step.clipped and step.norm_before > 10 and step.norm_after == pytest.approx(0.5, rel=1e-4)
    steps, _ = train_truncated(model, sequence, 3, lambda output, positions: 1000 * output.sum(), optimizer)
    assert not any(step.clipped for step in steps) and all(s.norm_after == s.norm_before > 10 for s in steps)
    with pytest.raises(ValueError, match="k \\(chunk length\\) must be a positive int"):
        train_truncated(model, sequence, 0, lambda output, positions: output.sum(), optimizer)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradient_flow_matches_an_independent_autograd_path(cell):
    """flow[d] (retain_grad over step()) == ‖∂L/∂h_t‖ from h_t as a leaf fed to forward() for the rest."""
    torch.manual_seed(0)
    model = RecallModel(cell, TINY_FLOW.symbols, TINY_FLOW.hidden_size).double()
    flow = gradient_flow(model, TINY_FLOW, torch.Generator().manual_seed(1))
    inputs, targets = recall_batch(TINY_FLOW, TINY_FLOW.flow_length, torch.Generator().manual_seed(1))
    inputs, T, t = inputs.double(), TINY_FLOW.flow_length, 15
    with torch.no_grad():
        _, (h, c) = model.rnn(inputs[:, : t + 1])  # state after step t
    h = h.clone().requires_grad_(True)
    output, _ = model.rnn(inputs[:, t + 1 :], (h, c))
    loss = F.cross_entropy(model.readout(output[:, -1]), targets[:, -1], reduction="sum")
    (gradient,) = torch.autograd.grad(loss, h)  # (1, B, H)
    assert flow[T - 1 - t] == pytest.approx(gradient[0].norm(dim=1).mean().item(), rel=1e-6)
    assert len(flow) == T and flow[0] > 0


def test_rnn_gradient_vanishes_and_an_open_forget_gate_carries_it():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rnn_flow = gradient_flow(RecallModel("rnn", 8, 16), TINY_FLOW, generator)
    lstm = RecallModel("lstm", 8, 16)
    raise_carry_bias(lstm, 3.0)
    lstm_flow = gradient_flow(lstm, TINY_FLOW, generator)
    assert rnn_flow[-1] / rnn_flow[0] < 1e-4  # 24 steps back, the RNN's gradient is all but gone
    assert lstm_flow[-1] / lstm_flow[0] > 100 * rnn_flow[-1] / rnn_flow[0]


def first_layer_activations(rnn, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with recording(rnn) as steps:
        rnn.step(x, None)
    return steps[0][0]


@pytest.mark.parametrize("cell,gate", [("lstm", "f"), ("peephole", "f"), ("coupled", "f"), ("gru", "z")])
def test_raise_carry_bias_opens_the_gate_that_keeps_the_state(cell, gate):
    torch.manual_seed(0)
    model = RecallModel(cell, 8, 16)
    x = torch.randn(4, 8)
    before = first_layer_activations(model.rnn, x)
    raise_carry_bias(model, 2.0)
    after = first_layer_activations(model.rnn, x)
    assert (after[gate] - before[gate]).min() > 0.1  # σ(a + 2) − σ(a) > 0.1 for |a| small
    others = [name for name in ("i", "o", "r") if name in before and not (cell == "coupled" and name == "i")]
    assert all(torch.allclose(after[name], before[name]) for name in others)


def fake_run(bleu4: float, content: float | None, seconds: list[float]) -> dict:
    metrics = {"bleu1": 50.0, "bleu2": 40.0, "bleu3": 30.0, "bleu4": bleu4, "content_accuracy": content,
               "shape": 25.0, "colour": 20.0, "parameters": 1000, "recurrent_parameters": 100}
    metrics["history"] = [{"epoch_seconds": s, "bleu4": bleu4, "train_loss": 1.0} for s in seconds]
    return metrics


def test_summary_and_table_arithmetic():
    failed = {"failed": "loss is not finite at step 3", "history": [], "parameters": 1000, "recurrent_parameters": 100}
    runs = {"rnn": [fake_run(10.0, 0.0, [2.0, 4.0]) | {"cpu_seconds": 90.0}, fake_run(20.0, 2.0, [6.0]), failed]}
    (row,) = cells_experiment.summarize(runs)
    assert row["bleu4"]["mean"] == 15.0 and row["bleu4"]["std"] == pytest.approx(math.sqrt(50))
    assert row["content_accuracy"] == {"mean": 1.0, "std": pytest.approx(math.sqrt(2))}
    assert row["epoch_seconds"]["mean"] == pytest.approx(4.5) and row["failed"] == 1
    table = cells_experiment.markdown_table([row])
    assert "| rnn | 50.0 ± 0.0 | 40.0 ± 0.0 | 30.0 ± 0.0 | 15.0 ± 7.1 | 1.0 ± 1.4 |" in table
    assert "| 4.5 ± 2.1 | 90 ± 0 | 2 (1 diverged) |" in table


def test_cells_command_end_to_end_and_resumes(tmp_path, capsys):
    tiny = ["--set", "data.synthetic.num_train=24", "--set", "data.synthetic.num_val=6", "--set",
            "data.synthetic.num_test=6", "--set", "train.epochs=2", "--set", "train.batch_size=8",
            "--set", "eval.beam_size=2", "--set", "eval.max_length=8"]
    arguments = ["cells", "--quick", "--cells", "rnn,gru", "--seeds", "2", "--threads", "1",
                 "--output", str(tmp_path / "out"), "--data-root", str(tmp_path / "data"), *tiny]
    assert main(arguments) == 0
    report = json.loads((tmp_path / "out" / "cells.json").read_text())
    assert [row["cell"] for row in report["table"]] == ["rnn", "gru"]
    for row in report["table"]:
        assert row["seeds"] == 2 and row["failed"] == 0 and 0 <= row["bleu1"]["mean"] <= 100
        assert row["epoch_seconds"]["mean"] > 0
    assert report["table"][1]["recurrent_parameters"] == 3 * report["table"][0]["recurrent_parameters"]
    assert all(len(run["history"]) == 2 for runs in report["runs"].values() for run in runs)
    table = (tmp_path / "out" / "cells.md").read_text()
    assert table.count("\n") == 4 and "| gru |" in table
    assert (tmp_path / "out" / "cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(arguments) == 0  # the same command again: every finished run is reused, none retrained
    assert capsys.readouterr().out.count("reusing") == 4


def test_gradients_command_quick(tmp_path):
    figure = tmp_path / "figure.png"
    assert main(["gradients", "--quick", "--cells", "rnn,lstm", "--threads", "1", "--output", str(tmp_path),
                 "--figure", str(figure)]) == 0
    report = json.loads((tmp_path / "gradients.json").read_text())
    rnn, lstm = report["cells"]
    assert rnn["flow_carry_bias"] is None and len(lstm["flow_carry_bias"]) == report["budget"]["flow_length"]
    clipping = rnn["clipping"]
    assert clipping["updates"] == len(clipping["norm_before"]) > 0 and 0 <= clipping["share_clipped"] <= 1
    assert clipping["max_after"] <= report["budget"]["grad_clip"] + 1e-6
    assert 0 <= rnn["recall_accuracy"] <= 1
    assert (tmp_path / "gradients.md").read_text().count("\n") == 4
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size < 150_000


@pytest.mark.parametrize("arguments,message", [
    (["gradients", "--cells", "lstn"], "--cells: expected a comma-separated subset"),
    (["cells", "--seeds", "0"], "--seeds: expected a positive number"),
])
def test_bad_arguments_get_one_line_errors(arguments, message, capsys, tmp_path):
    assert main([*arguments, "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
