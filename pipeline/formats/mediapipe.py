"""MediaPipe-ready TFLite files: the graph rewrite, the TFLite metadata (written with MediaPipe's published
schema, `mediapipe/tasks/metadata/metadata_schema_py_generated.py`, and flatbuffers), its check, and the
token-id probe model.

What MediaPipe Tasks' `TextClassifier` needs (its C++ source: text_model_utils.cc, text_preprocessing_graph.cc,
bert_preprocessor_calculator.cc):
- one subgraph; exactly three int32 inputs of shape [1, L] whose *metadata* names are `ids`, `mask`,
  `segment_ids` (it finds them by those names, in any order);
- TFLite metadata with the tokenizer as the subgraph's first input process unit: BertTokenizer (vocab.txt) or
  SentencePieceTokenizer (spiece.model), the file packed into the model file (a zip appended to the flatbuffer);
- a float32 output [1, C] with a TENSOR_AXIS_LABELS file (one label a line, in class order). MediaPipe applies
  no softmax, so the file must output probabilities.

`make_mediapipe_ready` turns a verified plain .tflite (int64 or int32 `input_ids`/`attention_mask`/`token_type_ids`,
logits out) into such a file without a second conversion: it post-processes the flatbuffer (new int32 inputs, a
CAST to the old input type in front, a SOFTMAX behind the logits), then packs the metadata and files.

Nothing here imports the (not importable) mediapipe metadata writers; the MediaPipe wheel's schema modules and
flatbuffers are all that is used. Every function raises PipelineError with a one-line message.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.formats.tflite_flatbuffer import MAX_LENGTH_KEY, opcode_builtin, opcode_index, pack_model, read_model, text

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.1.0"  # tokenizer process units need metadata parser 1.1.0 (MediaPipe's metadata_version.cc)
INPUT_ROLES = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "segment_ids"}
INPUT_ORDER = ("ids", "mask", "segment_ids")
LABEL_FILE = "labels.txt"
OUTPUT_NAME = "probability"
TOKENIZER_KINDS = ("wordpiece", "sentencepiece")


def _schemas():
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as md
        from mediapipe.tasks.metadata import schema_py_generated as fb
    except ImportError as err:
        raise PipelineError(f"mediapipe is not installed ({err}); pip install mediapipe==1.2.3") from None
    return md, fb


@dataclass
class DeviceTokenizer:
    """The tokenizer MediaPipe runs in the app: `kind` (wordpiece | sentencepiece) and its file."""

    kind: str
    path: Path

    @property
    def file_name(self) -> str:
        return self.path.name


def device_tokenizer(model_dir: Path, tokenizer=None) -> DeviceTokenizer:
    """The tokenizer file MediaPipe can run for this checkpoint: spiece.model (SentencePiece) or vocab.txt (WordPiece).

    A checkpoint with only tokenizer.json gets a vocab.txt written from it when it is WordPiece (`tokenizer`, the
    loaded HF tokenizer, provides `save_vocabulary`)."""
    model_dir = Path(model_dir)
    if (model_dir / "spiece.model").is_file():
        return DeviceTokenizer("sentencepiece", model_dir / "spiece.model")
    if (model_dir / "vocab.txt").is_file():
        return DeviceTokenizer("wordpiece", model_dir / "vocab.txt")
    raise PipelineError("MediaPipe's TextClassifier needs vocab.txt (WordPiece) or spiece.model (SentencePiece) "
                        "beside the checkpoint; found neither", model_dir)


# --- the graph rewrite ------------------------------------------------------------------------------------


def _canonical(name: str) -> str | None:
    for known in INPUT_ROLES:
        if known in name:
            return known
    return None


def _new_tensor(model, fb, subgraph, name: str, shape: list[int], dtype: int) -> int:
    tensor = fb.TensorT()
    tensor.name = name
    tensor.shape = np.asarray(shape, dtype=np.int32)
    tensor.type = dtype
    model.buffers.append(fb.BufferT())
    tensor.buffer = len(model.buffers) - 1
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _new_operator(fb, opcode: int, source: int, target: int, options_type: int, options):
    op = fb.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = np.asarray([source], dtype=np.int32)
    op.outputs = np.asarray([target], dtype=np.int32)
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    return op


def _input_roles(model, subgraph) -> dict[str, int]:
    """ids/mask/segment_ids -> input tensor index, from the signature names (else the tensor names)."""
    named: dict[str, int] = {}
    for sig in model.signatureDefs or []:
        for item in sig.inputs or []:
            named[text(item.name)] = item.tensorIndex
    if not named:
        for index in subgraph.inputs:
            name = subgraph.tensors[index].name
            named[text(name)] = index
    roles = {}
    for name, index in named.items():
        canonical = _canonical(name)
        if canonical:
            roles[INPUT_ROLES[canonical]] = index
    return roles


def rewrite_graph(tflite: bytes, max_length: int | None = None, classes: int | None = None) -> tuple[bytes, int, int]:
    """Plain file -> int32 inputs `ids`, `mask`, `segment_ids` (CAST to the old type in front when it was not int32)
    and a SOFTMAX over the logits as the only output `probability`. Returns (bytes, max_length, num_classes).

    A plain file with a dynamic length (inputs [1, -1]) gives a twin fixed at [1, max_length] (MediaPipe reads its
    input length from the tensors and pads to it), with the output fixed at [1, classes]; the tensors in between
    keep their dynamic signatures and take their shapes when the interpreter allocates."""

    _, fb = _schemas()
    model = read_model(tflite, fb)
    if len(model.subgraphs or []) != 1:
        raise PipelineError(f"MediaPipe needs a single-subgraph model, got {len(model.subgraphs or [])} subgraphs")
    subgraph = model.subgraphs[0]
    roles = _input_roles(model, subgraph)
    if len(subgraph.inputs) != 3 or set(roles) != set(INPUT_ORDER):
        raise PipelineError(f"MediaPipe's BERT path needs the 3 inputs input_ids/attention_mask/token_type_ids; "
                            f"found {len(subgraph.inputs)} inputs, recognised {sorted(roles)}")
    if len(subgraph.outputs) != 1:
        raise PipelineError(f"expected one output (the logits), found {len(subgraph.outputs)}")
    if not max_length:  # the TFLite stage records a dynamic file's max_length in its metadata
        for entry in model.metadata or []:
            if text(entry.name) == MAX_LENGTH_KEY:
                max_length = int(bytes(model.buffers[entry.buffer].data).decode())
    for i in roles.values():  # a dynamic length: fix it at max_length
        tensor = subgraph.tensors[i]
        if tensor.shapeSignature is not None and -1 in list(tensor.shapeSignature):
            if not max_length:
                raise PipelineError("the plain file takes a dynamic length and records no max_length")
            tensor.shape = np.asarray([1, max_length], dtype=np.int32)
            tensor.shapeSignature = None
    output = subgraph.tensors[subgraph.outputs[0]] if len(subgraph.outputs) == 1 else None
    if output is not None and classes and (output.shapeSignature is not None and -1 in list(output.shapeSignature)):
        output.shape = np.asarray([1, classes], dtype=np.int32)
        output.shapeSignature = None
    shapes = {role: [int(d) for d in subgraph.tensors[i].shape] for role, i in roles.items()}
    if any(len(s) != 2 or s[0] != 1 for s in shapes.values()) or len({s[1] for s in shapes.values()}) != 1:
        raise PipelineError(f"MediaPipe needs [1, L] inputs of one length L; got {shapes}")
    max_length = shapes["ids"][1]
    logits = subgraph.outputs[0]
    out_shape = [int(d) for d in subgraph.tensors[logits].shape]
    if subgraph.tensors[logits].type != fb.TensorType.FLOAT32 or len(out_shape) != 2:
        raise PipelineError(f"the output must be float32 [1, C] logits; got type {subgraph.tensors[logits].type} "
                            f"shape {out_shape}")

    cast = opcode_index(model, fb, fb.BuiltinOperator.CAST)
    softmax = opcode_index(model, fb, fb.BuiltinOperator.SOFTMAX)
    front, new_inputs = [], []
    for role in INPUT_ORDER:
        old = roles[role]
        tensor = subgraph.tensors[old]
        if tensor.type == fb.TensorType.INT32:  # already int32: rename and keep
            tensor.name = role
            tensor.shapeSignature = None
            new_inputs.append(old)
            continue
        new = _new_tensor(model, fb, subgraph, role, [1, max_length], fb.TensorType.INT32)
        options = fb.CastOptionsT()
        options.inDataType, options.outDataType = fb.TensorType.INT32, tensor.type
        front.append(_new_operator(fb, cast, new, old, fb.BuiltinOptions.CastOptions, options))
        new_inputs.append(new)
    probability = _new_tensor(model, fb, subgraph, OUTPUT_NAME, out_shape, fb.TensorType.FLOAT32)
    options = fb.SoftmaxOptionsT()
    options.beta = 1.0
    op = _new_operator(fb, softmax, logits, probability, fb.BuiltinOptions.SoftmaxOptions, options)
    subgraph.operators = front + list(subgraph.operators) + [op]
    subgraph.inputs = np.asarray(new_inputs, dtype=np.int32)
    subgraph.outputs = np.asarray([probability], dtype=np.int32)
    for sig in model.signatureDefs or []:
        sig.inputs = []
        for role, index in zip(INPUT_ORDER, new_inputs):
            item = fb.TensorMapT()
            item.name, item.tensorIndex = role, index
            sig.inputs.append(item)
        item = fb.TensorMapT()
        item.name, item.tensorIndex = OUTPUT_NAME, probability
        sig.outputs = [item]
    return pack_model(model, len(tflite), fb), max_length, out_shape[1]


def probe_graph(max_length: int) -> bytes:
    """A model with MediaPipe's BERT inputs whose output echoes `ids` as float scores ([1, L]): run through
    `TextClassifier` with labels "0".."L-1", each category's score is the token id at that position."""

    _, fb = _schemas()
    model = fb.ModelT()
    model.version = 3
    model.description = "token id probe"
    model.buffers = [fb.BufferT()]
    model.operatorCodes = []
    subgraph = fb.SubGraphT()
    subgraph.tensors = []
    subgraph.name = "main"
    inputs = [_new_tensor(model, fb, subgraph, role, [1, max_length], fb.TensorType.INT32) for role in INPUT_ORDER]
    out = _new_tensor(model, fb, subgraph, OUTPUT_NAME, [1, max_length], fb.TensorType.FLOAT32)
    op = fb.OperatorT()
    op.opcodeIndex = opcode_index(model, fb, fb.BuiltinOperator.CAST)
    op.inputs = np.asarray([inputs[0]], dtype=np.int32)
    op.outputs = np.asarray([out], dtype=np.int32)
    op.builtinOptionsType = fb.BuiltinOptions.CastOptions
    op.builtinOptions = fb.CastOptionsT()
    op.builtinOptions.inDataType = fb.TensorType.INT32
    op.builtinOptions.outDataType = fb.TensorType.FLOAT32
    subgraph.operators = [op]
    subgraph.inputs = np.asarray(inputs, dtype=np.int32)
    subgraph.outputs = np.asarray([out], dtype=np.int32)
    model.subgraphs = [subgraph]
    return pack_model(model, 4096, fb)


# --- metadata ---------------------------------------------------------------------------------------------


def metadata_buffer(labels: list[str], tokenizer: DeviceTokenizer, name: str, description: str) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001) of a BERT-style text classifier."""
    import flatbuffers

    md, _ = _schemas()
    if tokenizer.kind not in TOKENIZER_KINDS:
        raise PipelineError(f"unknown tokenizer kind {tokenizer.kind!r}; MediaPipe runs {list(TOKENIZER_KINDS)}")

    def feature(tensor_name: str, description: str):
        t = md.TensorMetadataT()
        t.name, t.description = tensor_name, description
        t.content = md.ContentT()
        t.content.contentPropertiesType = md.ContentProperties.FeatureProperties
        t.content.contentProperties = md.FeaturePropertiesT()
        return t

    inputs = [feature("ids", "token ids: [CLS] text [SEP], padded with 0"),
              feature("mask", "1 for real tokens, 0 for padding"),
              feature("segment_ids", "0 (one segment)")]
    output = feature(OUTPUT_NAME, "class probabilities (softmax over the logits)")
    labels_file = md.AssociatedFileT()
    labels_file.name, labels_file.type = LABEL_FILE, md.AssociatedFileType.TENSOR_AXIS_LABELS
    labels_file.description = "class names in output order"
    output.associatedFiles = [labels_file]

    unit = md.ProcessUnitT()
    vocab = md.AssociatedFileT()
    vocab.name = tokenizer.file_name
    if tokenizer.kind == "wordpiece":
        vocab.type = md.AssociatedFileType.VOCABULARY
        unit.optionsType = md.ProcessUnitOptions.BertTokenizerOptions
        unit.options = md.BertTokenizerOptionsT()
        unit.options.vocabFile = [vocab]
    else:
        vocab.type = md.AssociatedFileType.DESCRIPTIONS
        unit.optionsType = md.ProcessUnitOptions.SentencePieceTokenizerOptions
        unit.options = md.SentencePieceTokenizerOptionsT()
        unit.options.sentencePieceModel = [vocab]

    subgraph = md.SubGraphMetadataT()
    subgraph.name = name
    subgraph.inputTensorMetadata = inputs
    subgraph.outputTensorMetadata = [output]
    subgraph.inputProcessUnits = [unit]
    model = md.ModelMetadataT()
    model.name, model.description = name, description
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def attach_metadata(tflite: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `metadata` in its TFLITE_METADATA buffer and `files` packed after it (an appended zip,
    stored uncompressed, as MediaPipe's metadata extractor reads it)."""

    _, fb = _schemas()
    model = read_model(tflite, fb)
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.metadata = [m for m in (model.metadata or []) if text(m.name) != METADATA_NAME]
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    out = io.BytesIO(pack_model(model, len(tflite) + len(metadata), fb))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():  # fixed timestamps: the same inputs give the same bytes (cache keys)
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def make_mediapipe_ready(source: Path, target: Path, labels: list[str], tokenizer: DeviceTokenizer,
                         name: str = "albert text classifier") -> dict:
    """Write `target`: the plain .tflite at `source` rewritten for MediaPipe, with metadata and packed files.
    Returns what `check_metadata` reads back from the written file."""
    graph, max_length, classes = rewrite_graph(Path(source).read_bytes(), classes=len(labels))
    if classes != len(labels):
        raise PipelineError(f"the model has {classes} outputs but {len(labels)} labels", source)
    metadata = metadata_buffer(labels, tokenizer, name,
                               f"{tokenizer.kind} tokenizer, max length {max_length}, {classes} classes")
    files = {LABEL_FILE: ("\n".join(labels) + "\n").encode(), tokenizer.file_name: tokenizer.path.read_bytes()}
    Path(target).write_bytes(attach_metadata(graph, metadata, files))
    return check_metadata(target)


def probe_model(path: Path, max_length: int, tokenizer: DeviceTokenizer) -> Path:
    """The id-echo probe with the same tokenizer metadata as the real file (labels "0".."L-1")."""
    labels = [str(i) for i in range(max_length)]
    metadata = metadata_buffer(labels, tokenizer, "token id probe", "echoes the ids MediaPipe's tokenizer made")
    files = {LABEL_FILE: ("\n".join(labels) + "\n").encode(), tokenizer.file_name: tokenizer.path.read_bytes()}
    Path(path).write_bytes(attach_metadata(probe_graph(max_length), metadata, files))
    return Path(path)


# --- reading and checking ---------------------------------------------------------------------------------


def check_metadata(path: Path) -> dict:
    """Everything MediaPipe's TextClassifier reads from the file, checked; a one-line PipelineError naming the
    first problem otherwise. Returns {tokenizer, tokenizer_file, max_length, labels, inputs, output, min_parser_version}."""
    md, fb = _schemas()
    path = Path(path)
    data = path.read_bytes()
    try:
        if not fb.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("no TFL3 identifier")
        model = fb.Model.GetRootAsModel(data, 0)
        subgraphs = model.SubgraphsLength()
    except Exception as err:
        raise PipelineError(f"not a TFLite file ({type(err).__name__}: {err})", path) from None
    if subgraphs != 1:
        raise PipelineError(f"MediaPipe needs one subgraph, the file has {subgraphs}", path)
    raw = None
    for i in range(model.MetadataLength()):
        if text(model.Metadata(i).Name()) == METADATA_NAME:
            raw = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy()
    if raw is None or isinstance(raw, int) or len(raw) == 0:
        raise PipelineError("no TFLite metadata (TFLITE_METADATA): MediaPipe cannot find the tokenizer or labels", path)
    raw = bytes(raw)
    if not md.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
        raise PipelineError("TFLite metadata buffer is not ModelMetadata (identifier M001 missing)", path)
    try:
        meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(raw, 0))
    except Exception as err:
        raise PipelineError(f"TFLite metadata is unreadable ({type(err).__name__}: {err})", path) from None
    if len(meta.subgraphMetadata or []) != 1:
        raise PipelineError(f"metadata must describe one subgraph, found {len(meta.subgraphMetadata or [])}", path)
    sub = meta.subgraphMetadata[0]
    graph = model.Subgraphs(0)
    names = [text(t.name) for t in sub.inputTensorMetadata or []]
    if graph.InputsLength() != len(names) or sorted(names) != sorted(INPUT_ORDER):
        raise PipelineError(f"input tensor metadata must name the {graph.InputsLength()} inputs "
                            f"{list(INPUT_ORDER)}; found {names}", path)
    lengths = set()
    for i in range(graph.InputsLength()):
        tensor = graph.Tensors(graph.Inputs(i))
        shape = tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []
        if tensor.Type() != fb.TensorType.INT32 or len(shape) != 2 or shape[0] != 1:
            raise PipelineError(f"input {names[i]!r} must be int32 [1, L]; it is type {tensor.Type()} shape {shape}", path)
        lengths.add(shape[1])
    if len(lengths) != 1:
        raise PipelineError(f"inputs have different lengths {sorted(lengths)}", path)
    units = sub.inputProcessUnits or []
    if not units:
        raise PipelineError("no tokenizer in the metadata (subgraph input process units are empty)", path)
    unit = units[0]
    if unit.optionsType == md.ProcessUnitOptions.BertTokenizerOptions:
        kind, files = "wordpiece", unit.options.vocabFile or []
    elif unit.optionsType == md.ProcessUnitOptions.SentencePieceTokenizerOptions:
        kind, files = "sentencepiece", unit.options.sentencePieceModel or []
    else:
        raise PipelineError(f"the first input process unit is not a BertTokenizer or SentencePieceTokenizer "
                            f"(options type {unit.optionsType})", path)
    if not files:
        raise PipelineError(f"the {kind} tokenizer names no vocabulary/model file", path)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        packed = {info.filename: info for info in archive.infolist()}
    except zipfile.BadZipFile:
        raise PipelineError("no files packed in the model (the tokenizer and label files must be appended as a zip)",
                            path) from None
    tokenizer_file = text(files[0].name)
    outputs = sub.outputTensorMetadata or []
    if graph.OutputsLength() != 1 or len(outputs) != 1:
        raise PipelineError(f"expected one output with metadata; the graph has {graph.OutputsLength()}, "
                            f"metadata {len(outputs)}", path)
    out_tensor = graph.Tensors(graph.Outputs(0))
    out_shape = out_tensor.ShapeAsNumpy().tolist() if out_tensor.ShapeLength() else []
    if out_tensor.Type() != fb.TensorType.FLOAT32 or len(out_shape) != 2:
        raise PipelineError(f"the output must be float32 [1, C]; it is type {out_tensor.Type()} shape {out_shape}", path)
    label_files = [f for f in outputs[0].associatedFiles or [] if f.type == md.AssociatedFileType.TENSOR_AXIS_LABELS]
    if not label_files:
        raise PipelineError("the output has no TENSOR_AXIS_LABELS file: MediaPipe cannot name the classes", path)
    label_file = text(label_files[0].name)
    for needed in (tokenizer_file, label_file):
        if needed not in packed:
            raise PipelineError(f"{needed!r} is named in the metadata but not packed in the file "
                                f"(packed: {sorted(packed)})", path)
        if packed[needed].compress_type != zipfile.ZIP_STORED:
            raise PipelineError(f"{needed!r} is packed compressed; MediaPipe reads stored (uncompressed) files only", path)
    labels = archive.read(label_file).decode().splitlines()
    labels = [line for line in labels if line.strip()]
    if len(labels) != out_shape[1]:
        raise PipelineError(f"{label_file} has {len(labels)} labels for {out_shape[1]} outputs", path)
    return {"tokenizer": kind, "tokenizer_file": tokenizer_file, "max_length": lengths.pop(), "labels": labels,
            "inputs": names, "output": text(outputs[0].name), "min_parser_version": text(meta.minParserVersion)}
