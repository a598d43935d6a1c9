"""Window options shared by convolution and pooling: ints or (height, width) pairs."""


def pair(value, name, low):
    """``value`` as an (int, int) pair, each at least ``low``; ValueError otherwise."""
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= low for v in items
    ):
        raise ValueError(f"{name} must be an integer >= {low} or a pair of them, found {value!r}")
    return tuple(items)


def image_shape(in_shape, layer):
    """(C, H, W) from a build() input shape; ValueError for anything else."""
    if not (isinstance(in_shape, tuple) and len(in_shape) == 3):
        raise ValueError(f"{layer} takes images (C, H, W), found samples of shape {in_shape!r}")
    return in_shape


def output_hw(h, w, kernel, stride, pad, layer):
    """Output height and width of a sliding window; ValueError when nothing fits."""
    oh = (h + 2 * pad[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * pad[1] - kernel[1]) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{layer}: a {kernel[0]}x{kernel[1]} window with padding {pad} does "
            f"not fit a {h}x{w} image"
        )
    return oh, ow
