"""Naming the first ONNX op whose output a wrong .tflite no longer reproduces (onnx2tf route)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.shapes import trim
from pipeline.runtimes import canonical_input_name
from pipeline.core.tokenization import Encoded

# Values compared as sorted sets, so layout transposes do not count as divergence.
DIAGNOSE_RTOL = {"fp32": 1e-3, "int8": 0.05}


def diagnose(onnx_path: Path, tflite_path: Path, check: Encoded, input_names: list[str], precision: str,
             dynamic: bool = False) -> str:
    row = trim(check.row(0)) if dynamic else check.row(0)
    try:
        found = _first_diverging_op(onnx_path, tflite_path, row, DIAGNOSE_RTOL[precision])
    except Exception as err:  # the diagnosis must never hide the failure it explains
        return f"first diverging op unknown (diagnosis failed: {type(err).__name__}: {err})"
    if found is None:
        return "no single diverging ONNX op found (the drift is spread over the graph)"
    node, layer = found
    return f"first diverging op: ONNX node {node.name!r} ({node.op_type}) in layer {layer!r}"


def _first_diverging_op(onnx_path: Path, tflite_path: Path, row: dict[str, np.ndarray], rtol: float):
    """The earliest ONNX node whose output the .tflite does not reproduce, nor most of what follows it.

    Every intermediate float tensor of the ONNX graph (onnxruntime) is looked for among the .tflite's
    tensors (LiteRT without delegates, all tensors kept), compared as sorted values of the same size so
    that layout changes (onnx2tf transposes) and fused ops do not count as divergence.
    """
    import onnx
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    graph_model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = graph_model.graph
    typed = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    existing = {o.name for o in graph.output}
    for node in graph.node:
        for out in node.output:
            if out in typed and out not in existing and typed[out].type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                graph.output.append(typed[out])
                existing.add(out)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {i.name: row[i.name].astype(np.int64) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    onnx_values = dict(zip(names, session.run(names, feed)))

    interpreter = Interpreter(
        model_path=str(tflite_path),
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runner = interpreter.get_signature_runner()
    runner(**{n: row[canonical_input_name(n)].astype(d["dtype"]) for n, d in runner.get_input_details().items()})
    by_size: dict[int, list[np.ndarray]] = {}
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] != np.float32:
            continue
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        by_size.setdefault(int(value.size), []).append(np.sort(value.ravel()))

    def matched(value: np.ndarray) -> bool:
        # element-wise relative tolerance on the sorted values: a max-based one would let a tensor that
        # holds the -1e4 attention mask match whatever its real entries are.
        ordered = np.sort(value.ravel().astype(np.float32))
        magnitude = np.abs(ordered)
        tol = 1e-6 + rtol * (magnitude + float(np.percentile(magnitude, 10)))
        return any(bool(np.all(np.abs(c - ordered) <= tol)) for c in by_size.get(ordered.size, []))

    live = {i.name for i in graph.input}  # tensors computed from the inputs (not constant subgraphs)
    status: dict[str, bool | None] = {}  # output name -> matched (None: not comparable)
    for node in graph.node:
        depends = any(name in live for name in node.input)
        for out in node.output:
            if depends:
                live.add(out)
            value = onnx_values.get(out)
            status[out] = None if not depends or value is None or value.size < 2 else matched(value)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    nodes = list(graph.node)

    def downstream_match_fraction(start: int) -> float:
        seen, stack, hits, total = set(), [start], 0, 0
        while stack:
            for out in nodes[stack.pop()].output:
                for c in consumers.get(out, []):
                    if c in seen:
                        continue
                    seen.add(c)
                    stack.append(c)
                    for o in nodes[c].output:
                        if status.get(o) is not None:
                            total += 1
                            hits += bool(status[o])
        return hits / total if total else 0.0

    # An op fused by the converter has no tensor of its own but its consumers match again; a diverging op
    # is followed by (almost) nothing that matches.
    for index, node in enumerate(nodes):
        if any(status[o] is False for o in node.output) and downstream_match_fraction(index) < 0.5:
            layer = node.name.rsplit("/", 1)[0].strip("/").removeprefix("model/").removeprefix("model") or "(top level)"
            return node, layer
    return None


