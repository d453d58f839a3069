"""The one module that imports fhir.resources; everything else asks here.

The package's top level is R5, so models come from its R4B subpackage, which reads and writes
R4 data. Types that R4B added (absent from R4 4.0.1) are not offered: we store R4.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel

R4_TABLE = Path(__file__).with_name("definitions") / "r4-elements.json"

# Types that R4B introduced or renamed; they are not R4 (4.0.1) resources.
_R4B_ONLY = frozenset(
    {
        "AdministrableProductDefinition",
        "Citation",
        "ClinicalUseDefinition",
        "EvidenceReport",
        "Ingredient",
        "ManufacturedItemDefinition",
        "MedicinalProductDefinition",
        "NutritionProduct",
        "PackagedProductDefinition",
        "RegulatedAuthorization",
        "SubscriptionStatus",
        "SubscriptionTopic",
        "SubstanceDefinition",
    }
)
_ABSTRACT = frozenset({"Resource", "DomainResource"})


@cache
def resource_types() -> frozenset[str]:
    """Every concrete resource type we store: the R4 resources that R4B also has a model for.

    Named from the R4 table and R4B's type names only: importing every model class to ask would
    cost each worker ~47 MiB of pydantic schemas for types it may never see.
    """
    from fhir.resources.R4B import fhirtypes

    modelled = {attr[: -len("Type")] for attr in dir(fhirtypes) if attr.endswith("Type")}
    r4 = orjson.loads(R4_TABLE.read_bytes())["resources"]
    return frozenset(name for name in r4 if name in modelled and name not in _R4B_ONLY | _ABSTRACT)


def is_resource_type(name: str) -> bool:
    return name in resource_types()


def model_for(resource_type: str) -> type[FHIRAbstractModel]:
    return get_fhir_model_class(resource_type)
