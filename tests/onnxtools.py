"""Small hand-built ONNX models for tests that need "any model", not the reference one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def linear_model(path: Path, weights: Sequence[float], *, sqrt: bool = False, odd_batches_fail: bool = False) -> Path:
    """score = sigmoid(f(5 - x) @ w) for x of shape [batch, 4], saved at ``path``.

    f is Abs, or Sqrt with ``sqrt`` (NaN once an input exceeds 5). With ``odd_batches_fail`` a
    Reshape to [2, -1] makes every odd batch size fail at run time.
    """
    import onnx
    from onnx import TensorProto, helper

    def const(name: str, dims: list[int], values: list[int]) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.INT64, dims, values)
        )

    nodes = [
        helper.make_node("Constant", [], ["five"], value=helper.make_tensor("five_v", TensorProto.FLOAT, [], [5.0])),
        helper.make_node("Sub", ["five", "x"], ["d"]),
        helper.make_node("Sqrt" if sqrt else "Abs", ["d"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["m"]),
        const("flat", [1], [-1]),
        const("pairs", [2], [2, -1]),
        helper.make_node("Reshape", ["m", "pairs" if odd_batches_fail else "flat"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 1], list(weights))],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def embedding_model(path: Path, weights: Sequence[float], rows: int, *, sqrt: bool = False) -> Path:
    """score = sigmoid(f(5 - x) @ w + table[ids]) for x of shape [batch, 4] and int64 ids of shape [batch].

    ``table`` has ``rows`` rows (an id outside [-rows, rows) is refused by Gather); f is Abs, or Sqrt
    with ``sqrt`` (NaN once an input exceeds 5).
    """
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Constant", [], ["five"], value=helper.make_tensor("five_v", TensorProto.FLOAT, [], [5.0])),
        helper.make_node("Constant", [], ["flat"], value=helper.make_tensor("flat_v", TensorProto.INT64, [1], [-1])),
        helper.make_node("Sub", ["five", "x"], ["d"]),
        helper.make_node("Sqrt" if sqrt else "Abs", ["d"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "flat"], ["dense_logit"]),
        helper.make_node("Gather", ["table", "ids"], ["bias"]),
        helper.make_node("Add", ["dense_logit", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [4, 1], list(weights)),
            helper.make_tensor("table", TensorProto.FLOAT, [rows], [0.01 * i for i in range(rows)]),
        ],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def constant_model(path: Path, score: float) -> Path:
    """A model with linear_model's signature (x of shape [batch, 4]) that scores every row ``score``."""
    import math

    import onnx
    from onnx import TensorProto, helper

    logit = math.log(score / (1 - score))
    nodes = [
        helper.make_node("MatMul", ["x", "zeros"], ["m"]),
        helper.make_node("Add", ["m", "logit"], ["l"]),
        helper.make_node("Constant", [], ["flat"], value=helper.make_tensor("flat_v", TensorProto.INT64, [1], [-1])),
        helper.make_node("Reshape", ["l", "flat"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [
            helper.make_tensor("zeros", TensorProto.FLOAT, [4, 1], [0.0] * 4),
            helper.make_tensor("logit", TensorProto.FLOAT, [1], [logit]),
        ],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
