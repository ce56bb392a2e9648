#!/usr/bin/python3
"""validate_schema.py SCHEMA FILE...: checks SCHEMA against the JSON Schema
draft 2020-12 meta-schema, then prints one line per FILE: "valid" or
"invalid <path>: <message>". Uses Debian's python3-jsonschema, not ours."""
import json
import sys

from jsonschema import Draft202012Validator


def main():
    with open(sys.argv[1]) as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for name in sys.argv[2:]:
        with open(name) as f:
            instance = json.load(f)
        error = next(iter(sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))), None)
        if error is None:
            print("valid")
        else:
            path = ".".join(str(p) for p in error.absolute_path)
            print("invalid %s: %s" % (path, error.message.replace("\n", " ")))


if __name__ == "__main__":
    main()
