"""horn's built-in layers, written only against horn's public layer API.

Installed as ``horn.layers`` (setup.py maps this directory there), so
``from horn.layers import Dense`` works and no bare ``layers`` package is installed.
"""

from horn.layers.activations import ReLU, Sigmoid, Tanh
from horn.layers.dense import Dense
from horn.layers.dropconnect import DropConnectDense
from horn.layers.dropout import Dropout
from horn.layers.losses import MSE, SoftmaxCrossEntropy

__all__ = ["Dense", "DropConnectDense", "Dropout", "MSE", "ReLU", "Sigmoid",
           "SoftmaxCrossEntropy", "Tanh"]
