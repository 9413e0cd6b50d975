"""The chapter's character-level example: a recurrent network learns "hello" over the vocabulary [h, e, l, o].

Karpathy's "The Unreasonable Effectiveness of Recurrent Neural Networks" (2015) figure: the input
characters "h", "e", "l", "l" arrive one-hot, one per time step, and the targets are the next characters
"e", "l", "l", "o". The two "l" inputs need different answers ("l" then "o"), so the network has to
remember what came before: a feed-forward model over the current character alone cannot do it.

    x_t = onehot(char_t)                (4,)
    h_t = StackedLSTM(x_t, h_{t-1})     (H,)   any of the chapter's cells
    y_t = W_hy h_t + b_y                (4,)   one score per character
    p_t = softmax(y_t)                  the figure's output layer, printed per step below

    python examples/hello.py                 # lstm, 100 Adam steps, under a second after torch loads
    python examples/hello.py --cell gru
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.rnn.cells import CELLS
from captioner.rnn.stacked import StackedLSTM

CHARACTERS = "helo"  # the chapter's vocabulary, in its order: h=0, e=1, l=2, o=3
WORD = "hello"


class CharacterModel(nn.Module):
    """One-hot characters -> StackedLSTM -> a score per character at every step."""

    def __init__(self, hidden_size: int = 16, cell: str = "lstm", num_layers: int = 1) -> None:
        super().__init__()
        self.rnn = StackedLSTM(len(CHARACTERS), hidden_size, num_layers, cell=cell)
        self.output = nn.Linear(hidden_size, len(CHARACTERS))

    def forward(self, one_hot: Tensor) -> Tensor:
        """one_hot (B, T, 4) -> logits y (B, T, 4)."""
        hidden, _ = self.rnn(one_hot)  # (B, T, H)
        return self.output(hidden)  # (B, T, 4)  y_t = W_hy h_t + b_y


def encode(text: str) -> Tensor:
    """Characters of `text` as ids, e.g. "hell" -> [0, 1, 2, 2]."""
    unknown = sorted(set(text) - set(CHARACTERS))
    if unknown:
        raise ValueError(f"hello: characters {unknown} are not in the vocabulary {list(CHARACTERS)}")
    return torch.tensor([CHARACTERS.index(character) for character in text])


def training_pair() -> tuple[Tensor, Tensor]:
    """Inputs "hell" one-hot (1, 4, 4) and targets "ello" as ids (1, 4)."""
    inputs = F.one_hot(encode(WORD[:-1]), len(CHARACTERS)).float().unsqueeze(0)  # (1, T, 4)
    return inputs, encode(WORD[1:]).unsqueeze(0)  # (1, T)


def train_hello(cell: str = "lstm", hidden_size: int = 16, steps: int = 100, learning_rate: float = 0.02,
                seed: int = 0) -> tuple[CharacterModel, list[float]]:
    """Fit the one training pair with Adam; returns the model and the loss of every step."""
    torch.manual_seed(seed)
    model = CharacterModel(hidden_size, cell)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    inputs, targets = training_pair()
    losses = []
    for _ in range(steps):
        logits = model(inputs)  # (1, T, 4)
        loss = F.cross_entropy(logits.view(-1, len(CHARACTERS)), targets.view(-1))  # mean −log p_t(target_t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


@torch.no_grad()
def probabilities(model: CharacterModel, text: str = WORD[:-1]) -> Tensor:
    """p_t = softmax(y_t) for every input character of `text`: (T, 4)."""
    one_hot = F.one_hot(encode(text), len(CHARACTERS)).float().unsqueeze(0)  # (1, T, 4)
    return torch.softmax(model(one_hot)[0], dim=-1)  # (T, 4)


def predict(model: CharacterModel, text: str = WORD[:-1]) -> str:
    """The most likely next character at each step, e.g. "hell" -> "ello" once trained."""
    return "".join(CHARACTERS[index] for index in probabilities(model, text).argmax(dim=-1).tolist())


def format_table(probs: Tensor, text: str = WORD[:-1], targets: str = WORD[1:]) -> str:
    """The chapter's figure as text: one column per time step, one row per character, target marked *."""
    lines = ["step        " + "".join(f"{t:>9}" for t in range(1, len(text) + 1)),
             "input       " + "".join(f"{character:>9}" for character in text),
             "target      " + "".join(f"{character:>9}" for character in targets)]
    for row, character in enumerate(CHARACTERS):
        cells = "".join(f"{probs[t, row].item():>8.3f}" + ("*" if targets[t] == character else " ")
                        for t in range(len(text)))
        lines.append(f"p({character})        {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The chapter's 'hello' character model over [h, e, l, o].")
    parser.add_argument("--cell", default="lstm", choices=list(CELLS), help="recurrent cell (default: %(default)s)")
    parser.add_argument("--hidden-size", type=int, default=16, help="state size H (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps on the one example (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=0.02, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    torch.manual_seed(args.seed)
    untrained = CharacterModel(args.hidden_size, args.cell)
    print(f"before training ({args.cell}): predicts {predict(untrained)!r} from 'hell'")
    print(format_table(probabilities(untrained)))
    model, losses = train_hello(args.cell, args.hidden_size, args.steps, args.learning_rate, args.seed)
    print(f"\nafter {args.steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.4f}, "
          f"predicts {predict(model)!r} from 'hell'")
    print(format_table(probabilities(model)))
    return 0 if predict(model) == WORD[1:] else 1


if __name__ == "__main__":
    sys.exit(main())
