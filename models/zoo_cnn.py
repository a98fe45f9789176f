"""Convolutional zoo models: small_cnn, resnet18, mobilenetv2.

BatchNormalization stays unfused, as a PyTorch export of a model in training structure writes it (Conv without
bias -> BatchNormalization), because folding it is one of the passes these models exist to test.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .zoo_misc import GraphBuilder, tensor


def _classifier(b: GraphBuilder, x: str, cin: int, classes: int, output: str) -> None:
    """GlobalAveragePool -> Flatten -> Gemm(transB=1), the head torchvision models export."""
    y = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    w = b.const((b.rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32), "fc.weight")
    bias = b.const((0.01 * b.rng.standard_normal(classes)).astype(np.float32), "fc.bias")
    b.nodes.append(helper.make_node("Gemm", [y, w, bias], [output], name="fc", alpha=1.0, beta=1.0, transB=1))


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu x2, MaxPool, Dropout, GlobalAveragePool, Flatten, Gemm on [1,3,32,32] -> [1,10].

    An Identity and an inference-mode Dropout are left in so canonicalization has no-ops to remove.
    """
    b = GraphBuilder(seed)
    y = b.op("Relu", [b.bn(b.conv("input", 3, 16, 3, bias=True), 16)])
    y = b.op("Identity", [y])
    y = b.op("Relu", [b.bn(b.conv(y, 16, 32, 3, bias=True), 32)])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Dropout", [y, b.f32(0.1, "dropout.ratio")])
    _classifier(b, y, 32, 10, "logits")
    return b.model("small_cnn", [tensor("input", [1, 3, 32, 32])], [tensor("logits", [1, 10])])


def _basic_block(b: GraphBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    """torchvision BasicBlock: conv3x3-BN-Relu-conv3x3-BN (+ 1x1 conv-BN downsample) -> Add -> Relu.

    The second BN's gamma is scaled down (as trained ResNets end up) so the residual stream does not double
    its variance at every block.
    """
    y = b.op("Relu", [b.bn(b.conv(x, cin, cout, 3, stride=stride), cout)])
    y = b.bn(b.conv(y, cout, cout, 3), cout, gamma_scale=0.3)
    skip = x
    if stride != 1 or cin != cout:
        skip = b.bn(b.conv(x, cin, cout, 1, stride=stride), cout)
    return b.op("Relu", [b.op("Add", [y, skip])])


def resnet18(seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 on [batch,3,224,224] -> logits [batch,1000], He-normal weights, BN unfused."""
    b = GraphBuilder(seed)
    y = b.op("Relu", [b.bn(b.conv("input", 3, 64, 7, stride=2), 64)])
    y = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        y = _basic_block(b, y, cin, cout, stride)
        y = _basic_block(b, y, cout, cout, 1)
        cin = cout
    _classifier(b, y, 512, 1000, "logits")
    return b.model("resnet18", [tensor("input", ["batch", 3, 224, 224])], [tensor("logits", ["batch", 1000])])


def _relu6(b: GraphBuilder, x: str) -> str:
    """ReLU6 as PyTorch exports it at opset >= 11: Clip with min/max inputs."""
    return b.op("Clip", [x, b.f32(0.0, "relu6.min"), b.f32(6.0, "relu6.max")])


def mobilenetv2(seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 (width 1.0) on [batch,3,224,224] -> logits [batch,1000]: inverted residuals, depthwise 3x3
    convs (group = channels), ReLU6 as Clip(0, 6), linear bottlenecks, BN unfused."""
    b = GraphBuilder(seed)
    y = _relu6(b, b.bn(b.conv("input", 3, 32, 3, stride=2), 32))
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = y
            if t != 1:
                h = _relu6(b, b.bn(b.conv(h, cin, hidden, 1), hidden))
            h = _relu6(b, b.bn(b.conv(h, hidden, hidden, 3, stride=stride, group=hidden), hidden))
            h = b.bn(b.conv(h, hidden, c, 1), c, gamma_scale=0.5 if stride == 1 and cin == c else 1.0)
            y = b.op("Add", [y, h]) if stride == 1 and cin == c else h
            cin = c
    y = _relu6(b, b.bn(b.conv(y, cin, 1280, 1), 1280))
    _classifier(b, y, 1280, 1000, "logits")
    return b.model("mobilenetv2", [tensor("input", ["batch", 3, 224, 224])], [tensor("logits", ["batch", 1000])])
