"""Encoders: token states (B, T, D) + attention mask (B, T) -> one vector per text (B, output_dim)."""
import torch
from torch import nn
from torch.nn import functional as F


def _same_conv(conv, x, mask):
    """Conv1d over (B, T, D) keeping length T, with padded positions zeroed before and after."""
    x = x * mask.unsqueeze(-1)
    h = conv(x.transpose(1, 2))[:, :, : x.size(1)]   # (B, C, T)
    return F.relu(h).transpose(1, 2) * mask.unsqueeze(-1)  # (B, T, C)


def _masked_max(h, mask):
    return h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(dim=1).values  # (B, C)


class CLSEncoder(nn.Module):
    """The transformer's first token ([CLS]) state."""

    def __init__(self, input_dim, config):
        super().__init__()
        self.output_dim = input_dim

    def forward(self, states, mask):
        return states[:, 0]


class CNNEncoder(nn.Module):
    """Convolutions of several widths, ReLU, max over time (Kim 2014; iclassifier's TextCNN)."""

    def __init__(self, input_dim, config):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(input_dim, config.num_filters, k, padding=k // 2) for k in config.kernel_sizes)
        self.output_dim = config.num_filters * len(config.kernel_sizes)

    def forward(self, states, mask):
        mask = mask.to(states.dtype)
        return torch.cat([_masked_max(_same_conv(c, states, mask), mask) for c in self.convs], dim=-1)


class DenseBlock(nn.Module):
    """Densely connected 1-D convolutions: layer i sees the input and every earlier layer's output."""

    def __init__(self, input_dim, config):
        super().__init__()
        g, k = config.densenet_growth, config.densenet_kernel_size
        self.convs = nn.ModuleList(
            nn.Conv1d(input_dim + i * g, g, k, padding=k // 2) for i in range(config.densenet_layers))
        self.output_dim = g * config.densenet_layers

    def forward(self, states, mask):
        mask = mask.to(states.dtype)
        features, outputs = states, []
        for conv in self.convs:
            h = _same_conv(conv, features, mask)
            outputs.append(h)
            features = torch.cat([features, h], dim=-1)
        return torch.cat(outputs, dim=-1)  # (B, T, layers * growth)


class DenseNetCNNEncoder(nn.Module):
    """DenseNet block, then max over time."""

    def __init__(self, input_dim, config):
        super().__init__()
        self.block = DenseBlock(input_dim, config)
        self.output_dim = self.block.output_dim

    def forward(self, states, mask):
        return _masked_max(self.block(states, mask), mask)


class DenseNetDSAEncoder(nn.Module):
    """DenseNet block, then Dynamic Self-Attention (Yoon et al. 2018, arXiv 1808.07383).

    Each head projects the tokens, then routes: attention logits start at zero and grow by the
    agreement of each token with the head's current summary, for a fixed number of iterations.
    Padded tokens get no attention.
    """

    def __init__(self, input_dim, config):
        super().__init__()
        self.block = DenseBlock(input_dim, config)
        self.heads, self.size, self.iterations = config.dsa_heads, config.dsa_size, config.dsa_iterations
        self.project = nn.Linear(self.block.output_dim, self.heads * self.size)
        self.output_dim = self.heads * self.size

    def forward(self, states, mask):
        h = self.block(states, mask)                                   # (B, T, C)
        b, t, _ = h.shape
        x = self.project(h).view(b, t, self.heads, self.size).transpose(1, 2)   # (B, r, T, d)
        pad = ~mask.bool().unsqueeze(1)                                 # (B, 1, T)
        logits = x.new_zeros(b, self.heads, t)
        for i in range(self.iterations):
            attn = logits.masked_fill(pad, float("-inf")).softmax(dim=-1)      # (B, r, T)
            z = torch.tanh((attn.unsqueeze(-1) * x).sum(dim=2))                 # (B, r, d)
            if i + 1 < self.iterations:
                logits = logits + (x * z.unsqueeze(2)).sum(dim=-1)
        return z.reshape(b, self.output_dim)


ENCODERS = {
    "cls": CLSEncoder,
    "cnn": CNNEncoder,
    "densenet-cnn": DenseNetCNNEncoder,
    "densenet-dsa": DenseNetDSAEncoder,
}
