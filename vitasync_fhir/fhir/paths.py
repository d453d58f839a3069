"""The path segment convertor for resource types.

A resource type starts with a capital letter, which `_history`, `_search` and `metadata` do not:
routes written `/{resource_type:fhirtype}` can never swallow those paths, whatever order the
routers are mounted in.
"""

from starlette.convertors import Convertor, register_url_convertor


class ResourceTypeConvertor(Convertor[str]):
    regex = "[A-Z][A-Za-z]{0,63}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhirtype", ResourceTypeConvertor())
