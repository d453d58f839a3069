"""The one module that imports fhir.resources; everything else asks here.

The package's top level is R5, so models come from its R4B subpackage, which reads and writes
R4 data. Types that R4B added (absent from R4 4.0.1) are not offered: we store R4.
"""

from __future__ import annotations

from functools import cache

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from fhir_core.fhirabstractmodel import FHIRAbstractModel

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
    """Every concrete resource type we store: R4B models that are also R4 resources."""
    from fhir.resources.R4B import fhirtypes

    names = set()
    for attr in dir(fhirtypes):
        if not attr.endswith("Type"):
            continue
        name = attr[: -len("Type")]
        if name in _ABSTRACT or name in _R4B_ONLY or not name[:1].isupper():
            continue
        try:
            klass = get_fhir_model_class(name)
        except (ValueError, AttributeError):
            continue
        if isinstance(klass, type) and issubclass(klass, Resource):
            names.add(name)
    return frozenset(names)


def is_resource_type(name: str) -> bool:
    return name in resource_types()


def model_for(resource_type: str) -> type[FHIRAbstractModel]:
    return get_fhir_model_class(resource_type)
