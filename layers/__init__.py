"""horn's built-in layers, written only against horn's public layer API.

Installed as ``horn.layers`` (setup.py maps this directory there), so
``from horn.layers import Dense`` works and no bare ``layers`` package is installed.
"""

from horn.layers.activations import ReLU, Sigmoid, Tanh
from horn.layers.batch_norm import BatchNorm
from horn.layers.conv import Conv2d
from horn.layers.dense import Dense
from horn.layers.dropconnect import DropConnectDense
from horn.layers.dropout import Dropout
from horn.layers.losses import MSE, SoftmaxCrossEntropy
from horn.layers.pooling import AvgPool2d, Flatten, GlobalAvgPool, MaxPool2d

__all__ = [
    "AvgPool2d",
    "BatchNorm",
    "Conv2d",
    "Dense",
    "DropConnectDense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool",
    "MSE",
    "MaxPool2d",
    "ReLU",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
]
