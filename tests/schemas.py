"""The JSON Schemas constrained output is tested with (tests/test_constrain.py through the API and the CLI,
tests/test_serve_tools.py through the server): nested objects, arrays with bounds, enums, numbers, patterns,
Chinese keys and values. All bounded (lengths, item counts, ranges, multipleOf): a tiny random model would
otherwise fill max_tokens with the digits of a never-ending number."""


def S(props, req=None, **kw):
    """An object schema: these properties, all required unless req says otherwise, no others."""
    return {"type": "object", "properties": props, "required": list(props) if req is None else req,
            "additionalProperties": False, **kw}


def small(lo=0, hi=9):
    return {"type": "integer", "minimum": lo, "maximum": hi}


SCHEMAS = {
    "flat": S({"name": {"type": "string", "maxLength": 8}, "age": small(0, 150)}),
    "boolean": S({"ok": {"type": "boolean"}}),
    "null": S({"nothing": {"type": "null"}}),
    "enum_str": S({"color": {"enum": ["red", "green", "blue"]}}),
    "enum_mixed": S({"v": {"enum": [1, "two", True, None, 3.5]}}),
    "const": S({"kind": {"const": "minigpt"}, "version": {"const": 1}}),
    "int_bounds": S({"n": small(-5, 5)}),
    "int_exclusive": S({"n": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20}}),
    "number_bounds": S({"x": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25}}),
    "number_negative": S({"t": {"type": "number", "minimum": -273.5, "maximum": 100, "multipleOf": 0.5}}),
    "string_length": S({"code": {"type": "string", "minLength": 2, "maxLength": 4}}),
    "pattern_plate": S({"plate": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}),
    "pattern_hex": S({"color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}),
    "pattern_date": S({"day": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])$"}}),
    "array_bounds": S({"xs": {"type": "array", "items": small(), "minItems": 2, "maxItems": 4}}),
    "array_enum": S({"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}),
    "array_exact": S({"rgb": {"type": "array", "items": small(0, 255), "minItems": 3, "maxItems": 3}}),
    "array_of_objects": S({"people": {"type": "array", "maxItems": 2, "items": S(
        {"name": {"type": "string", "maxLength": 5}, "adult": {"type": "boolean"}})}}),
    "tuple": S({"point": {"type": "array", "prefixItems": [small(0, 99), small(0, 99)], "items": False}}),
    "nested": S({"user": S({"id": small(1, 1000), "profile": S({"nick": {"type": "string", "maxLength": 6},
                                                                "vip": {"type": "boolean"}})})}),
    "deep": S({"a": S({"b": S({"c": S({"d": {"enum": ["end"]}})})})}),
    "optional": S({"id": small(), "note": {"type": "string", "maxLength": 5}, "flag": {"type": "boolean"}}, req=["id"]),
    "all_optional": S({"a": {"type": "boolean"}, "b": {"type": "null"}}, req=[]),
    "nullable": S({"v": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}),
    "any_of": S({"v": {"anyOf": [{"type": "boolean"}, {"type": "string", "maxLength": 3}]}}),
    "one_of_objects": S({"shape": {"oneOf": [S({"kind": {"const": "circle"}, "r": small(1, 9)}),
                                             S({"kind": {"const": "square"}, "side": small(1, 9)})]}}),
    "ref": {"$defs": {"pt": S({"x": small(), "y": small()})},
            **S({"from": {"$ref": "#/$defs/pt"}, "to": {"$ref": "#/$defs/pt"}})},
    "top_array": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 5},
    "top_enum": {"enum": ["yes", "no", "maybe"]},
    "top_integer": small(100, 999),
    "chinese_keys": S({"城市": {"enum": ["北京", "上海", "深圳"]}, "人口": small(0, 30000000)}),
    "chinese_values": S({"名字": {"type": "string", "maxLength": 4},
                         "爱好": {"type": "array", "items": {"enum": ["读书", "游泳", "编程"]}, "maxItems": 2}}),
    "chinese_nested": S({"订单": S({"编号": {"type": "string", "pattern": "^[0-9]{4}$"}, "已付款": {"type": "boolean"},
                                   "备注": {"type": ["string", "null"], "maxLength": 6}})}),
    "unicode_enum": S({"greeting": {"enum": ["你好", "héllo", "こんにちは", "👋"]}}),
    "answer": S({"answer": {"type": "string", "maxLength": 10}, "confidence": small(0, 100)}),
}
