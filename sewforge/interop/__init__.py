"""Interoperability: pretrained weights in (SpikingJelly 2.0, the paper's 2021 code), NIR out.

* :func:`convert_state_dict` / :func:`load_source` / :func:`save_converted` (:mod:`.convert`),
  behind ``sewforge convert`` and ``create_model(name, pretrained=PATH)``;
* :func:`to_nir` (:mod:`.nir_export`), behind ``sewforge export``; needs the ``nir`` extra.
"""
from __future__ import annotations

from .nir_export import NIRExportError, run_nir, to_nir, write_nir
from .convert import (SOURCES, ConversionError, ConversionWarning, Converted, Source, convert_state_dict,
                      load_pretrained, load_source, save_converted)

__all__ = ["SOURCES", "ConversionError", "ConversionWarning", "Converted", "Source", "convert_state_dict",
           "load_pretrained", "load_source", "save_converted", "NIRExportError", "to_nir", "write_nir", "run_nir"]

from ..models import set_pretrained_loader as _set_pretrained_loader

_set_pretrained_loader(load_pretrained)  # create_model(name, pretrained=PATH) reads files through this
