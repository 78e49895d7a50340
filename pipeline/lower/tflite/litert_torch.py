"""The litert-torch route (optional extra): `litert_torch.convert` of the module itself (fp32), and its PT2E
static int8 (per-channel symmetric), per its README — whatever `quant` says: its dynamic mode writes files
LiteRT cannot load. The embedding tables are stored as int8 rows plus a per-row scale (PT2E leaves
nn.Embedding fp32). Inputs become int32 and the int8 output an int8 tensor (LiteRTRunner casts and dequantizes).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.shapes import eval_rows
from pipeline.lower.tflite.onnx2tf import dummy_rows
from pipeline.lower.tflite.patch import _Exported, int8_gather_embeddings

LITERT_TORCH_MISSING = "litert-torch is not installed; pip install '.[litert-torch]'"


def convert(model, max_length, scratch, calibration, input_names, log) -> dict[str, Path]:
    """litert_torch.convert (fp32) and its PT2E static int8 (per-channel symmetric), per its README."""
    try:
        import litert_torch
    except ImportError:
        raise PipelineError(LITERT_TORCH_MISSING) from None
    started = time.perf_counter()
    module = _Exported(model.export_model.eval(), len(input_names) == 3).eval()
    sample_rows = eval_rows(calibration if len(calibration) else dummy_rows(max_length), False, input_names)
    sample = {n: torch.from_numpy(np.ascontiguousarray(sample_rows[0][n])) for n in input_names}
    try:
        fp32 = litert_torch.convert(module, sample_args=(), sample_kwargs=sample)
        fp32.export(str(scratch / "fp32.tflite"))

        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        except ImportError:
            from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
        with int8_gather_embeddings(model.export_model, max_length):
            captured = torch.export.export(module, (), sample).module()
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for row in sample_rows:
                prepared(**{n: torch.from_numpy(np.ascontiguousarray(row[n])) for n in input_names})
        quantized = convert_pt2e(prepared, fold_quantize=False)
        int8 = litert_torch.convert(quantized, sample_args=(), sample_kwargs=sample,
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
        int8.export(str(scratch / "int8.tflite"))
    except PipelineError:
        raise
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err)[:400]}"
        raise PipelineError(f"litert-torch conversion failed ({reason})", scratch) from None
    log(f"  litert-torch fp32 + PT2E int8: {time.perf_counter() - started:.1f} s")
    return {"fp32": scratch / "fp32.tflite", "int8": scratch / "int8.tflite"}
