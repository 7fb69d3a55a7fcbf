"""Multi-source EIS data pipeline: readers into one schema, split by cell, compact training-set files.

Sources: `zhang2020` and `rashid2023` (measured, in the shared data directory, see DATA.md), `pybamm_chen2020`
(PyBaMM-simulated LG M50 spectra shipped in `simulated/`), the generic CSV format for users' own
measurements, and native potentiostat files (`read_spectra_file`, through impedance.py's readers). The
aggregated training set ships as `training_set.npz` with its provenance file.
Everything lands in `Spectrum` (standard sign: Im(Z) > 0 is inductive; frequencies descending; SOC and
SOH as fractions) collected in a `SpectrumSet`.
"""

from ._aggregate import Collection, collect, format_report, load_all, measured_data_available
from ._generic import GENERIC_CSV_COLUMNS, read_generic_csv, write_generic_csv
from ._instrument import OperatingPoint, detect_format, read_instrument_file, read_spectra_file
from ._npz import content_hash, load_npz, save_npz
from ._paths import DEFAULT_DATA_ROOT, ENV_VAR, data_root
from ._rashid import RashidDefect, find_defects, read_rashid2023
from ._schema import (
    FLAG_DESCRIPTIONS,
    FLAG_DUPLICATE,
    FLAG_NO_CAPACITY,
    FLAG_SOC20_LIKE_SOC5,
    FLAG_SOC_UNLABELLED,
    DataNotFoundError,
    EisDataError,
    Spectrum,
    SpectrumSet,
)
from ._shipped import (
    SOURCE_INFO,
    TRAINING_SET_PATH,
    load_training_set,
    provenance_path,
    write_training_set,
)
from ._simulated import (
    SIMULATED_CELL,
    SIMULATED_PATH,
    SIMULATED_PROFILE,
    SIMULATED_SOURCE,
    read_pybamm_chen2020,
    read_simulated_metadata,
)
from ._split import split_by_cell, temperature_strata
from ._zhang import PairingCheck, ZhangReadReport, read_capacity, read_zhang2020, verify_zhang_pairing

__all__ = [
    "DEFAULT_DATA_ROOT",
    "ENV_VAR",
    "FLAG_DESCRIPTIONS",
    "FLAG_DUPLICATE",
    "FLAG_NO_CAPACITY",
    "FLAG_SOC20_LIKE_SOC5",
    "FLAG_SOC_UNLABELLED",
    "GENERIC_CSV_COLUMNS",
    "SIMULATED_CELL",
    "SIMULATED_PATH",
    "SIMULATED_PROFILE",
    "SIMULATED_SOURCE",
    "SOURCE_INFO",
    "TRAINING_SET_PATH",
    "Collection",
    "DataNotFoundError",
    "EisDataError",
    "OperatingPoint",
    "PairingCheck",
    "RashidDefect",
    "Spectrum",
    "SpectrumSet",
    "ZhangReadReport",
    "collect",
    "content_hash",
    "data_root",
    "detect_format",
    "find_defects",
    "format_report",
    "load_all",
    "load_npz",
    "load_training_set",
    "measured_data_available",
    "provenance_path",
    "read_capacity",
    "read_generic_csv",
    "read_instrument_file",
    "read_pybamm_chen2020",
    "read_rashid2023",
    "read_simulated_metadata",
    "read_spectra_file",
    "read_zhang2020",
    "save_npz",
    "split_by_cell",
    "temperature_strata",
    "verify_zhang_pairing",
    "write_generic_csv",
    "write_training_set",
]
