"""Our explicit StackedLSTM against torch's recurrent layers (nn.LSTM, nn.GRU, nn.RNN), same weights.

Shapes: B=64, T=20, E=256, H=512, 2 layers, batch_first. Modes:
  forward        the whole sequence, under torch.no_grad (inference)
  train          forward + backward of output.sum(), input included in the gradient (as in the decoder)
  decode         20 single steps through both layers, state carried (greedy decoding's inner loop)
Variants: "ours" (StackedLSTM as the model uses it: the fast path for lstm), "torch" (the library layer,
oneDNN on CPU, cuDNN on CUDA) and, for lstm, "reference" (StackedLSTM(fast=False): the readable cells with
autograd). On CPU, oneDNN inside torch's layer is what makes it fast; on CUDA, cuDNN.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import Settings, measure, milliseconds, ratio, table, write_result
from captioner.rnn.stacked import StackedLSTM

SHAPE = {"batch": 64, "length": 20, "input_size": 256, "hidden_size": 512, "num_layers": 2}
QUICK_SHAPE = {"batch": 4, "length": 5, "input_size": 8, "hidden_size": 16, "num_layers": 2}
LIBRARY = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
DECODE_STEPS = 20


def build(cell: str, shape: dict, device: str) -> dict[str, nn.Module]:
    """Our module and the library twin with identical weights (state_dict keys match by design)."""
    E, H, L = shape["input_size"], shape["hidden_size"], shape["num_layers"]
    ours = StackedLSTM(E, H, L, cell=cell).to(device)
    library = LIBRARY[cell](E, H, L, batch_first=True).to(device)
    library.load_state_dict(ours.state_dict())
    modules = {"ours": ours, "torch": library}
    if cell == "lstm":
        reference = StackedLSTM(E, H, L, cell=cell, fast=False).to(device)
        reference.load_state_dict(ours.state_dict())
        modules["reference"] = reference
    return modules


def forward_call(module: nn.Module, x: torch.Tensor):
    def run():
        with torch.no_grad():
            return module(x)
    return run


def train_call(module: nn.Module, x: torch.Tensor):
    def run():
        x.grad = None
        for parameter in module.parameters():
            parameter.grad = None  # as optimizer.zero_grad(set_to_none=True)
        module(x)[0].sum().backward()
    return run


def decode_call(module: nn.Module, x_t: torch.Tensor, cell: str):
    """DECODE_STEPS steps of (B, E) inputs; ours through .step, the library layer with a length-1 sequence."""
    L, B, H = module.num_layers, x_t.shape[0], module.hidden_size
    zeros = torch.zeros(L, B, H, device=x_t.device)

    def run():
        with torch.no_grad():
            if isinstance(module, StackedLSTM):
                state = (zeros, zeros)
                for _ in range(DECODE_STEPS):
                    top, state = module.step(x_t, state)
            else:
                state = (zeros, zeros) if cell == "lstm" else zeros
                for _ in range(DECODE_STEPS):
                    top, state = module(x_t.unsqueeze(1), state)
    return run


def run(settings: Settings) -> dict:
    shape = QUICK_SHAPE if settings.quick else SHAPE
    timings: dict = {}
    rows = []
    for device in settings.devices:
        for cell in LIBRARY:
            torch.manual_seed(0)
            modules = build(cell, shape, device)
            x = torch.randn(shape["batch"], shape["length"], shape["input_size"], device=device, requires_grad=True)
            calls = {"forward": lambda m: forward_call(m, x), "train": lambda m: train_call(m, x),
                     "decode": lambda m: decode_call(m, x[:, 0].detach(), cell)}
            for mode, make in calls.items():
                result = measure({name: make(module) for name, module in modules.items()}, settings.repeats,
                                 device=device)
                timings.setdefault(device, {}).setdefault(cell, {})[mode] = result
                rows.append(_row(device, cell, mode, result))
    ratios = {f"{device}/{cell}/{mode}": {name: ratio(result, name, "torch") for name in result if name != "torch"}
              for device, cells in timings.items() for cell, modes in cells.items() for mode, result in modes.items()}
    headers = ["device", "cell", "mode", "ours ms (min / median)", "torch ms", "ours / torch (min)",
               "ours / torch (CPU time)", "reference ms", "reference / torch", "reference / ours"]
    print(table(f"StackedLSTM vs torch, B={shape['batch']} T={shape['length']} E={shape['input_size']} "
                f"H={shape['hidden_size']} L={shape['num_layers']}, decode = {DECODE_STEPS} steps", headers, rows))
    path = write_result(settings, "recurrent", {"shape": shape, "decode_steps": DECODE_STEPS,
                                                "timings": timings, "ratios": ratios})
    return {"path": str(path), "ratios": ratios}


def _row(device: str, cell: str, mode: str, result: dict) -> list[str]:
    ours, library = result["ours"], result["torch"]
    row = [device, cell, mode, f"{milliseconds(ours['min'])} / {milliseconds(ours['median'])}",
           f"{milliseconds(library['min'])} / {milliseconds(library['median'])}",
           f"{ours['min'] / library['min']:.3f}", f"{ours['cpu_min'] / library['cpu_min']:.3f}"]
    if "reference" in result:
        reference = result["reference"]
        row += [milliseconds(reference["min"]), f"{reference['min'] / library['min']:.3f}",
                f"{reference['min'] / ours['min']:.2f}"]
    else:
        row += ["", "", ""]
    return row
