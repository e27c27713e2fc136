"""The seeds' own training loops, data pipelines included, as the baseline of ``bench/run.py``.

The loops, transforms and DataLoaders are the seeds' (``../shared/seeds``); the network classes
come from :mod:`bplab.models.architectures`, which are the tutorials' classes with the same submodules. The
``Variable(...)`` wrappers are left out: they have been no-ops since PyTorch 0.4. Nothing here is
tracked or saved, which is the point: it is what the tutorials cost without the pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from bplab.models.architectures import build_model
from bplab.params.schema import ModelSpec


def data_tf(x):
    """Seed 000, section 2.4.5: the per-sample transform of the MLP's MNIST dataset."""
    x = np.array(x, dtype="float32") / 255
    x = (x - 0.5) / 0.5
    x = x.reshape((-1,))
    x = torch.from_numpy(x)
    return x


def _mnist(root: Path, transform, train_limit: int | None, test_limit: int | None):
    from torchvision.datasets import mnist

    train_set = mnist.MNIST(str(root), train=True, transform=transform, download=False)
    test_set = mnist.MNIST(str(root), train=False, transform=transform, download=False)
    if train_limit:
        train_set = Subset(train_set, range(train_limit))
    if test_limit:
        test_set = Subset(test_set, range(test_limit))
    return train_set, test_set


def mnist_mlp(root: Path, epochs: int, train_limit: int | None = None,
              test_limit: int | None = None) -> dict[str, object]:
    """Seed 000, 2.4.5: the 4-layer MLP, SGD 0.1, batch 64, evaluated every epoch (batch 128).

    Returns the seconds of each epoch (training plus evaluation) and the last eval accuracy.
    """
    train_set, test_set = _mnist(root, data_tf, train_limit, test_limit)
    train_data = DataLoader(train_set, batch_size=64, shuffle=True)
    test_data = DataLoader(test_set, batch_size=128, shuffle=False)
    net = build_model(ModelSpec(arch="mnist_net", hidden=[400, 200, 100]), 784, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), 1e-1)
    seconds, eval_acc = [], 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        train_loss = 0
        train_acc = 0
        net.train()
        for im, label in train_data:
            out = net(im)
            loss = criterion(out, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
            _, pred = out.max(1)
            num_correct = (pred == label).sum().item()
            acc = num_correct / im.shape[0]
            train_acc += acc
        eval_loss = 0
        eval_acc = 0
        net.eval()
        for im, label in test_data:
            out = net(im)
            loss = criterion(out, label)
            eval_loss += loss.item()
            _, pred = out.max(1)
            num_correct = (pred == label).sum().item()
            acc = num_correct / im.shape[0]
            eval_acc += acc
        eval_acc /= len(test_data)
        seconds.append(time.perf_counter() - started)
    return {"epoch_seconds": seconds, "eval_acc": eval_acc}


def mnist_batchnet(root: Path, epochs: int, train_limit: int | None = None,
                   test_limit: int | None = None) -> dict[str, object]:
    """Seed 000, 2.4.5: Batch_Net with ToTensor + Normalize, SGD 0.01, batch 64, evaluated once at the end."""
    from torchvision import transforms

    data_tf_compose = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    train_dataset, test_dataset = _mnist(root, data_tf_compose, train_limit, test_limit)
    train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=64, shuffle=False)
    model = build_model(ModelSpec(arch="batch_net", hidden=[300, 100]), 784, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        train_acc = 0
        model.train()
        num = 0
        for img, label in train_loader:
            img = img.view(img.size(0), -1)
            out = model(img)
            loss = criterion(out, label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _, pred = out.max(1)
            train_acc += (pred == label).sum().item() / img.shape[0]
            num += 1
        seconds.append(time.perf_counter() - started)
    model.eval()
    eval_acc = 0
    for img, label in test_loader:
        img = img.view(img.size(0), -1)
        with torch.no_grad():
            out = model(img)
        _, pred = out.max(1)
        eval_acc += (pred == label).sum().item()
    return {"epoch_seconds": seconds, "eval_acc": eval_acc / len(test_dataset)}


def _flower_loop(forward, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """The seed's full-batch loop, the same in 2.4.1, 2.4.2 and 2.4.4; returns the seconds."""
    criterion = nn.BCEWithLogitsLoss()
    started = time.perf_counter()
    for _ in range(steps):
        out = forward(x)
        loss = criterion(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def flower_logreg(x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seed 000, 2.4.1: logistic regression with raw parameters; returns the seconds."""
    w = nn.Parameter(torch.randn(2, 1))
    b = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([w, b], 1e-1)

    def logistic_regression(x):
        return torch.mm(x, w) + b

    return _flower_loop(logistic_regression, optimizer, x, y, steps)


def flower_twolayer(x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seed 000, 2.4.1: the two-layer network with raw parameters; returns the seconds."""
    w1 = nn.Parameter(torch.randn(2, 4) * 0.01)
    b1 = nn.Parameter(torch.zeros(4))
    w2 = nn.Parameter(torch.randn(4, 1) * 0.01)
    b2 = nn.Parameter(torch.zeros(1))

    def two_network(x):
        x1 = torch.mm(x, w1) + b1
        x1 = F.tanh(x1)
        x2 = torch.mm(x1, w2) + b2
        return x2

    return _flower_loop(two_network, torch.optim.SGD([w1, w2, b1, b2], 1.), x, y, steps)


def flower_net(arch: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seed 000, 2.4.2 and 2.4.4: ``seq_net`` or ``module_net`` (2-4-1), SGD 1.0; returns the seconds."""
    net = build_model(ModelSpec(arch=arch, hidden=[4]), 2, 1)
    return _flower_loop(net, torch.optim.SGD(net.parameters(), 1.), x, y, steps)


def boston(arch: str, hidden: list[int], features: np.ndarray, target: np.ndarray, epochs: int,
           adam_groups: bool = False) -> float:
    """Seed 004, 3.6 (and 3.2 for the Adam groups): StandardScaler on all rows, a DataLoader with
    batch 128, shuffling and one worker process, MSE per iteration; returns the seconds."""
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    ss = StandardScaler(with_mean=True, with_std=True)
    boston_xs = ss.fit_transform(features)
    train_xt = torch.from_numpy(boston_xs.astype(np.float32))
    train_yt = torch.from_numpy(target.astype(np.float32))
    train_data = TensorDataset(train_xt, train_yt)
    train_loader = DataLoader(dataset=train_data, batch_size=128, shuffle=True, num_workers=1)
    mlp = build_model(ModelSpec(arch=arch, hidden=hidden), features.shape[1], 1)
    if adam_groups:
        optimizer = torch.optim.Adam([{"params": mlp.hidden.parameters(), "lr": 0.0001},
                                      {"params": mlp.regression.parameters(), "lr": 0.01}], lr=1e-2)
    else:
        optimizer = torch.optim.SGD(mlp.parameters(), lr=0.001)
    loss_func = nn.MSELoss()
    train_loss_all = []
    for _ in range(epochs):
        for b_x, b_y in train_loader:
            output = mlp(b_x).flatten()
            train_loss = loss_func(output, b_y)
            optimizer.zero_grad()
            train_loss.backward()
            optimizer.step()
            train_loss_all.append(train_loss.item())
    return time.perf_counter() - started
