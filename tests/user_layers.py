"""Layers written as a user would, outside horn, for the partition-protocol tests.

``Affine`` is a fully connected layer that owes nothing to Dense: its own parameter
names, its weights stored (out, in), plain ``xp`` arithmetic. It takes part in
sub-network training only through the partition protocol of ``horn.Layer``. ``Gain``
has a parameter and no partition protocol: sub-networks must refuse it.
"""

from horn import Layer


class Affine(Layer):
    """y = act(s * x @ kernel.T + offset), kernel (width, inputs); act: identity or relu."""

    partition_role = "split"

    def __init__(self, width, activation="identity"):
        if activation not in ("identity", "relu"):
            raise ValueError(f"activation must be identity or relu, found {activation!r}")
        self.width, self.activation = int(width), activation

    def build(self, inputs):
        self.declare("kernel", (self.width, inputs), init="he", fan_in=inputs, fan_out=self.width)
        self.declare("offset", (self.width,), init="normal")
        return self.width

    def forward(self, x, train):
        self.x = x
        z = (x @ self.params["kernel"].T) * self.input_scale + self.params["offset"]
        self.y = self.xp.maximum(z, 0) if self.activation == "relu" else z
        return self.y

    def backward(self, dy):
        if self.activation == "relu":
            dy = dy * (self.y > 0)
        self.grads["offset"][...] = dy.sum(axis=0)
        dy = dy * self.input_scale
        self.grads["kernel"][...] = dy.T @ self.x
        return dy @ self.params["kernel"] if self.needs_input_grad else None

    # the partition protocol: kernel's columns follow the inputs, its rows and offset the outputs
    def partition_axes(self):
        return {"kernel": (1, 0), "offset": (None, 0)}

    def partition_spec(self, units):
        return {**self.spec(), "width": units}


class Gain(Layer):
    """y = g * x with one learned gain per feature; no partition protocol."""

    def build(self, inputs):
        self.declare("g", (inputs,), init="ones")
        return inputs

    def forward(self, x, train):
        self.x = x
        return x * self.params["g"]

    def backward(self, dy):
        self.grads["g"][...] = (dy * self.x).sum(axis=0)
        return dy * self.params["g"]
