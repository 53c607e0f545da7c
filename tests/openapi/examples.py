"""Every example in the OpenAPI document is valid against the schema it illustrates.

schemathesis sends the request examples to the server (its examples phase); this checks the
rest — response bodies, parameters and component schemas — so that no example in the document
can drift from the types it was written for. Run by tests/openapi/schemathesis.sh with the
schemathesis venv's Python (jsonschema_rs is one of schemathesis's own dependencies).

Usage: python examples.py OPENAPI_JSON
"""

import json
import sys

import jsonschema_rs


def main(path: str) -> int:
    doc = json.load(open(path))
    components = doc.get("components", {})

    def check(where: str, schema: dict, example) -> list[str]:
        # `#/components/...` references resolve against the root: the components go along.
        root = {"allOf": [schema], "components": components}
        v = jsonschema_rs.Draft202012Validator(root)
        return [f"{where}: {e.message} at {list(e.instance_path)}" for e in v.iter_errors(example)]

    errors: list[str] = []
    seen = 0
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        for i, ex in enumerate(examples_of(schema)):
            seen += 1
            errors += check(f"components.schemas.{name} example {i}", schema, ex)
        for where, sub in nested(name, schema):
            for ex in examples_of(sub):
                seen += 1
                errors += check(where, sub, ex)
    for p, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {p}"
            for param in op.get("parameters", []):
                schema = param.get("schema", {})
                for ex in [param["example"]] if "example" in param else []:
                    seen += 1
                    errors += check(f"{where} parameter {param['name']}", schema, ex)
            bodies = [("request", op.get("requestBody", {}))]
            bodies += [(f"response {code}", r) for code, r in op.get("responses", {}).items()]
            for label, body in bodies:
                for ct, media in body.get("content", {}).items():
                    schema = media.get("schema", {})
                    for ex in media_examples(media):
                        seen += 1
                        errors += check(f"{where} {label} {ct}", schema, ex)
    for e in errors:
        print("example does not match its schema:", e)
    print(f"{seen} examples checked, {len(errors)} invalid")
    return 1 if errors or seen == 0 else 0


def examples_of(schema: dict) -> list:
    out = []
    if "example" in schema:
        out.append(schema["example"])
    out += schema.get("examples", []) if isinstance(schema.get("examples"), list) else []
    return out


def nested(name: str, schema, path: str = ""):
    """Every (where, subschema) below a component schema that carries examples of its own."""
    if not isinstance(schema, dict):
        return
    if path and examples_of(schema):
        yield f"components.schemas.{name}{path}", schema
    for key, sub in schema.get("properties", {}).items():
        yield from nested(name, sub, f"{path}.{key}")
    for i, sub in enumerate(schema.get("oneOf", []) + schema.get("allOf", [])):
        yield from nested(name, sub, f"{path}[{i}]")
    if isinstance(schema.get("items"), dict):
        yield from nested(name, schema["items"], f"{path}[]")


def media_examples(media: dict) -> list:
    out = [media["example"]] if "example" in media else []
    out += [e.get("value") for e in media.get("examples", {}).values() if "value" in e]
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
