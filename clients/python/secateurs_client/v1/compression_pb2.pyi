import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState

class UploadBlobRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BlobHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[BlobHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class BlobHeader(_message.Message):
    __slots__ = ("sha256", "size_bytes", "filename")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    filename: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., filename: _Optional[str] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("id", "size_bytes", "existed")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    size_bytes: int
    existed: bool
    def __init__(self, id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., existed: _Optional[bool] = ...) -> None: ...

class ModelSource(_message.Message):
    __slots__ = ("arch", "arch_kwargs", "weights_blob_id", "program_blob_id")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    ARCH_KWARGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    arch: str
    arch_kwargs: _struct_pb2.Struct
    weights_blob_id: str
    program_blob_id: str
    def __init__(self, arch: _Optional[str] = ..., arch_kwargs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., weights_blob_id: _Optional[str] = ..., program_blob_id: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("latency_ms", "speedup", "size_bytes", "params", "macs", "max_accuracy_drop")
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    latency_ms: float
    speedup: float
    size_bytes: int
    params: int
    macs: int
    max_accuracy_drop: float
    def __init__(self, latency_ms: _Optional[float] = ..., speedup: _Optional[float] = ..., size_bytes: _Optional[int] = ..., params: _Optional[int] = ..., macs: _Optional[int] = ..., max_accuracy_drop: _Optional[float] = ...) -> None: ...

class LatencyProtocol(_message.Message):
    __slots__ = ("warmup_runs", "warmup_seconds", "window", "min_samples", "max_seconds", "tolerance")
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    warmup_runs: int
    warmup_seconds: float
    window: int
    min_samples: int
    max_seconds: float
    tolerance: float
    def __init__(self, warmup_runs: _Optional[int] = ..., warmup_seconds: _Optional[float] = ..., window: _Optional[int] = ..., min_samples: _Optional[int] = ..., max_seconds: _Optional[float] = ..., tolerance: _Optional[float] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("runtime", "threads", "batch", "precision", "percentile", "probe", "protocol")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    threads: int
    batch: int
    precision: str
    percentile: float
    probe: str
    protocol: LatencyProtocol
    def __init__(self, runtime: _Optional[str] = ..., threads: _Optional[int] = ..., batch: _Optional[int] = ..., precision: _Optional[str] = ..., percentile: _Optional[float] = ..., probe: _Optional[str] = ..., protocol: _Optional[_Union[LatencyProtocol, _Mapping]] = ...) -> None: ...

class DataSource(_message.Message):
    __slots__ = ("train_blob_id", "train_uri", "val_blob_id", "val_uri", "preset", "val_split", "calibration_samples", "evaluation_samples", "format")
    TRAIN_BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_URI_FIELD_NUMBER: _ClassVar[int]
    VAL_BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    VAL_URI_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    VAL_SPLIT_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    train_blob_id: str
    train_uri: str
    val_blob_id: str
    val_uri: str
    preset: str
    val_split: str
    calibration_samples: int
    evaluation_samples: int
    format: str
    def __init__(self, train_blob_id: _Optional[str] = ..., train_uri: _Optional[str] = ..., val_blob_id: _Optional[str] = ..., val_uri: _Optional[str] = ..., preset: _Optional[str] = ..., val_split: _Optional[str] = ..., calibration_samples: _Optional[int] = ..., evaluation_samples: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class Recovery(_message.Message):
    __slots__ = ("epochs", "lr", "distill_kl_weight", "distill_feature_weight", "distill_attention_weight", "progressive_steps", "optimizer", "batch_size")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    DISTILL_KL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DISTILL_FEATURE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DISTILL_ATTENTION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROGRESSIVE_STEPS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    lr: float
    distill_kl_weight: float
    distill_feature_weight: float
    distill_attention_weight: float
    progressive_steps: int
    optimizer: str
    batch_size: int
    def __init__(self, epochs: _Optional[int] = ..., lr: _Optional[float] = ..., distill_kl_weight: _Optional[float] = ..., distill_feature_weight: _Optional[float] = ..., distill_attention_weight: _Optional[float] = ..., progressive_steps: _Optional[int] = ..., optimizer: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Pruning(_message.Message):
    __slots__ = ("ratio", "group_ratios", "importance", "round_to", "min_channels", "depth")
    class GroupRatiosEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RATIO_FIELD_NUMBER: _ClassVar[int]
    GROUP_RATIOS_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    ROUND_TO_FIELD_NUMBER: _ClassVar[int]
    MIN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    ratio: float
    group_ratios: _containers.ScalarMap[str, float]
    importance: str
    round_to: int
    min_channels: int
    depth: str
    def __init__(self, ratio: _Optional[float] = ..., group_ratios: _Optional[_Mapping[str, float]] = ..., importance: _Optional[str] = ..., round_to: _Optional[int] = ..., min_channels: _Optional[int] = ..., depth: _Optional[str] = ...) -> None: ...

class InputTensor(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("request_id", "model", "input_shape", "inputs", "budget", "target", "data", "recovery", "pruning", "exports", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: ModelSource
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    inputs: _containers.RepeatedCompositeFieldContainer[InputTensor]
    budget: Budget
    target: Target
    data: DataSource
    recovery: Recovery
    pruning: Pruning
    exports: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[ModelSource, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ..., inputs: _Optional[_Iterable[_Union[InputTensor, _Mapping]]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., data: _Optional[_Union[DataSource, _Mapping]] = ..., recovery: _Optional[_Union[Recovery, _Mapping]] = ..., pruning: _Optional[_Union[Pruning, _Mapping]] = ..., exports: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "filename", "sha256", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    filename: str
    sha256: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., filename: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("reason", "message", "field", "code")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    field: str
    code: int
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., code: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "request", "labels", "create_time", "start_time", "end_time", "stage", "progress", "error", "artifacts", "report", "cancel_requested", "last_sequence")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    request: CreateJobRequest
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    stage: str
    progress: float
    error: JobError
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    report: _struct_pb2.Struct
    cancel_requested: bool
    last_sequence: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., request: _Optional[_Union[CreateJobRequest, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., report: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: JobState
    labels: _containers.ScalarMap[str, str]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "stage", "kind", "message", "progress", "data", "state")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    stage: str
    kind: str
    message: str
    progress: float
    data: _struct_pb2.Struct
    state: JobState
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stage: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., progress: _Optional[float] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("job_id", "name", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("data", "offset", "size_bytes", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    size_bytes: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class DescribeProbeRequest(_message.Message):
    __slots__ = ("runtime", "precision", "threads")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    precision: str
    threads: int
    def __init__(self, runtime: _Optional[str] = ..., precision: _Optional[str] = ..., threads: _Optional[int] = ...) -> None: ...

class RuntimeStatus(_message.Message):
    __slots__ = ("name", "available", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    reason: str
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ProbeDescription(_message.Message):
    __slots__ = ("fingerprint", "runtimes", "version", "models_measured")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_MEASURED_FIELD_NUMBER: _ClassVar[int]
    fingerprint: _struct_pb2.Struct
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeStatus]
    version: str
    models_measured: int
    def __init__(self, fingerprint: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeStatus, _Mapping]]] = ..., version: _Optional[str] = ..., models_measured: _Optional[int] = ...) -> None: ...

class ProbeProtocol(_message.Message):
    __slots__ = ("warmup_runs", "warmup_seconds", "window", "min_samples", "max_seconds", "tolerance", "interleave")
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    INTERLEAVE_FIELD_NUMBER: _ClassVar[int]
    warmup_runs: int
    warmup_seconds: float
    window: int
    min_samples: int
    max_seconds: float
    tolerance: float
    interleave: str
    def __init__(self, warmup_runs: _Optional[int] = ..., warmup_seconds: _Optional[float] = ..., window: _Optional[int] = ..., min_samples: _Optional[int] = ..., max_seconds: _Optional[float] = ..., tolerance: _Optional[float] = ..., interleave: _Optional[str] = ...) -> None: ...

class ProbeModel(_message.Message):
    __slots__ = ("sha256", "size_bytes", "input_shape", "fresh_session")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FRESH_SESSION_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    fresh_session: bool
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., fresh_session: _Optional[bool] = ...) -> None: ...

class MeasureHeader(_message.Message):
    __slots__ = ("runtime", "precision", "threads", "protocol", "models", "seed")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    precision: str
    threads: int
    protocol: ProbeProtocol
    models: _containers.RepeatedCompositeFieldContainer[ProbeModel]
    seed: int
    def __init__(self, runtime: _Optional[str] = ..., precision: _Optional[str] = ..., threads: _Optional[int] = ..., protocol: _Optional[_Union[ProbeProtocol, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ProbeModel, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class MeasureRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: MeasureHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[MeasureHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class LatencyStatistics(_message.Message):
    __slots__ = ("n", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "cov", "throughput_per_s", "stable", "duration_s", "histogram_edges_ms", "histogram_counts", "components")
    N_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    STD_MS_FIELD_NUMBER: _ClassVar[int]
    COV_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_EDGES_MS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_COUNTS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    n: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cov: float
    throughput_per_s: float
    stable: bool
    duration_s: float
    histogram_edges_ms: _containers.RepeatedScalarFieldContainer[float]
    histogram_counts: _containers.RepeatedScalarFieldContainer[int]
    components: _struct_pb2.Struct
    def __init__(self, n: _Optional[int] = ..., mean_ms: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., min_ms: _Optional[float] = ..., max_ms: _Optional[float] = ..., std_ms: _Optional[float] = ..., cov: _Optional[float] = ..., throughput_per_s: _Optional[float] = ..., stable: _Optional[bool] = ..., duration_s: _Optional[float] = ..., histogram_edges_ms: _Optional[_Iterable[float]] = ..., histogram_counts: _Optional[_Iterable[int]] = ..., components: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class MeasureResponse(_message.Message):
    __slots__ = ("stats", "fingerprint")
    STATS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[LatencyStatistics]
    fingerprint: _struct_pb2.Struct
    def __init__(self, stats: _Optional[_Iterable[_Union[LatencyStatistics, _Mapping]]] = ..., fingerprint: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class EngineChunk(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: _struct_pb2.Struct
    chunk: bytes
    def __init__(self, info: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
