"""Public response schemas: what clients receive, separate from internal types.

Field names follow the paper (p_a, p_a_lower, n0, n, alpha, sigma). Radii are L2 distances
in the model's input space: [0,1] pixels of the 3 x H x W image the model sees.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from accsmooth.smoothing import Certificate, overestimated


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code, e.g. wrong_image_size")
    detail: str = Field(description="what was wrong, for a human")


class SurrogateCertificate(BaseModel):
    """The /certify answer: a certificate from one surrogate forward pass."""

    model: str
    model_version: str
    method: Literal["surrogate"] = "surrogate"
    predicted_class: int | None = Field(description="class index; null when abstained")
    label: str | None = Field(description="class name; null when abstained")
    abstained: bool
    certified_radius: float = Field(description="L2 radius in [0,1] pixel units; 0 if abstained")
    p_a: float = Field(description="the surrogate's probability of its top class")
    p_a_lower: float = Field(description="bound CERTIFY would give (minus the shift), floored at 0")
    sigma: float
    calibrated: bool = Field(description="whether the calibration shift was subtracted")
    resized: bool = Field(False, description="true when the upload was resized (resize=true)")
    radius_space: str = Field(description="the space the radius is measured in")
    latency_ms: float = Field(description="server-side time for this image")


class Agreement(BaseModel):
    same_class: bool = Field(description="same predicted class, or both abstain")
    radius_gap: float = Field(description="surrogate radius minus Monte-Carlo radius")
    overestimated: bool = Field(description="the surrogate certificate claims more than MC")

    @classmethod
    def between(cls, served: SurrogateCertificate, mc: Certificate) -> Agreement:
        """Does the served certificate claim more than Monte-Carlo? The core's one rule,
        `overestimated`: a larger radius, or another class."""
        over = overestimated(
            -1 if served.abstained else served.predicted_class,
            served.certified_radius,
            -1 if mc.abstained else mc.predicted_class,
            mc.radius,
        )
        return cls(
            same_class=served.predicted_class == mc.predicted_class,
            radius_gap=served.certified_radius - mc.radius,
            overestimated=over,
        )


class SampledCertificate(BaseModel):
    """The /certify/sampled answer: Cohen et al.'s CERTIFY and its comparison with /certify."""

    model: str
    model_version: str
    method: Literal["monte_carlo"] = "monte_carlo"
    predicted_class: int | None
    label: str | None
    abstained: bool
    certified_radius: float
    p_a_lower: float
    sigma: float
    counts: list[int] = Field(description="per-class counts over the n estimation samples")
    counts0: list[int] = Field(description="per-class counts over the n0 selection samples")
    n0: int
    n: int
    alpha: float
    batch_size: int
    seed: int = Field(description="pass it back to reproduce this exact result")
    latency_ms: float
    samples_per_second: float = Field(description="(n0 + n) / model time")
    surrogate: SurrogateCertificate
    agreement: Agreement


class HybridCertificate(SurrogateCertificate):
    """/certify?mode=hybrid: the surrogate's answer when clear of the boundary, else CERTIFY's."""

    method: Literal["surrogate", "monte_carlo"]
    mode: Literal["hybrid"] = "hybrid"
    reason: Literal["clear_certify", "clear_abstain", "boundary"] = Field(
        description="why this method answered (see accsmooth.smoothing.hybrid_route)"
    )
    surrogate_p_a_lower: float = Field(description="the surrogate's calibrated bound (routing)")
    n0: int | None = Field(None, description="Monte-Carlo selection samples (null: surrogate)")
    n: int | None = Field(None, description="Monte-Carlo estimation samples (null: surrogate)")
    alpha: float | None = None
    seed: int | None = None


class MonteCarloSummary(BaseModel):
    predicted_class: int | None
    label: str | None
    abstained: bool
    certified_radius: float
    p_a_lower: float
    counts: list[int]
    n0: int
    n: int
    alpha: float
    seed: int
    seconds: float = Field(description="compute time of the audit")


class AuditRecord(BaseModel):
    """One shadow audit: a served /certify answer and Monte-Carlo's verdict on the same image."""

    model: str
    model_version: str
    source: Literal["shadow"]
    time: str = Field(description="when the audited answer was served (ISO 8601, UTC)")
    image_sha256: str
    surrogate: SurrogateCertificate
    monte_carlo: MonteCarloSummary
    agreement: Agreement


class AuditList(BaseModel):
    audits: list[AuditRecord] = Field(description="newest first")
    done: int = Field(description="shadow audits finished by this worker")
    dropped: int = Field(description="shadow audits dropped (queue full) by this worker")
    pending: int = Field(description="shadow audits running or waiting now")


class DriftStatus(BaseModel):
    """The drift alarm of one bundle (server.shadow.drift): exact binomial test over the window."""

    drifting: bool
    audit_rate: float
    window: int = Field(description="ACCSMOOTH_DRIFT_WINDOW: audits tested at most")
    audits: int = Field(description="shadow audits in the window now")
    overestimated: int
    overestimation_rate: float | None
    rate_lower: float = Field(description="one-sided (1 - level) Clopper-Pearson lower bound")
    p_value: float = Field(description="P(Bin(audits, epsilon) >= overestimated)")
    epsilon: float | None = Field(description="the bundle's promise; null: uncalibrated")
    level: float


class HybridPlan(BaseModel):
    """How mode=hybrid falls back, measured at load."""

    margin: float
    budget_ms: float
    samples_per_second: float = Field(description="base-model throughput measured at warm-up")
    n0: int
    n: int


class ModelSummary(BaseModel):
    name: str
    version: str
    status: Literal["loading", "ready", "failed"]
    error: str | None = None
    description: str = ""
    sigma: float | None = None
    classes: list[str] = []
    input_shape: list[int] | None = None
    calibrated: bool = False
    providers: dict[str, str] = Field({}, description="execution provider per graph")
    max_certifiable_radius: float | None = Field(
        None,
        description="largest radius CERTIFY can give at the bundle's n: sigma Phi^-1(alpha^(1/n))",
    )
    served_certified_accuracy: dict[str, float] | None = Field(
        None,
        description="served certified accuracy on the bundle's evaluation images by radius "
        "(what ?radius= ranks bundles by)",
    )


class ModelDetail(ModelSummary):
    created: str | None = None
    noise: str | None = None
    protocol: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    exporter: dict[str, Any] | None = None
    drift: DriftStatus | None = None
    hybrid: HybridPlan | None = None


class ModelList(BaseModel):
    default: str | None
    models: list[ModelSummary]


class Health(BaseModel):
    status: str
    models: dict[str, str] = {}
