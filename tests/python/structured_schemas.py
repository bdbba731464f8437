"""The JSON schemas of the structured-output conformance check (`structured_conformance.py`).

Each entry is `(name, prompt, schema)`. Together they cover nesting, enums, arrays with
bounds, required and optional properties, `$ref` / `$defs`, number ranges, string patterns and
formats, `anyOf`, `const`, booleans and nulls. Strings mostly carry a `maxLength`, as a real
application's would, so a greedy small model cannot spend its token budget inside one.
"""

S = {"type": "string", "maxLength": 24}
INT = {"type": "integer", "minimum": -1000, "maximum": 1000}


def obj(props, required=None, extra=False):
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": extra,
    }


SCHEMAS = [
    ("person", "Describe a person.", obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("color", "Pick a primary color.", obj({"color": {"enum": ["red", "green", "blue"]}})),
    ("bool", "Is water wet?", obj({"answer": {"type": "boolean"}})),
    ("int_range", "Rate this movie from 1 to 5.", obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}})),
    ("float_range", "Give a probability.", obj({"p": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("neg_range", "A winter temperature in Celsius.", obj({"celsius": {"type": "integer", "minimum": -40, "maximum": 0}})),
    ("zip", "A US zip code.", obj({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}})),
    ("date", "A date in 2024.", obj({"date": {"type": "string", "pattern": "^2024-[01][0-9]-[0-3][0-9]$"}})),
    ("hex_color", "A color as hex.", obj({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
    ("email", "An email address.", obj({"email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.com$"}})),
    ("tags", "Three tags for a blog post.", obj({"tags": {"type": "array", "items": S, "minItems": 3, "maxItems": 3}})),
    ("nums", "Between two and four prime numbers.", obj({"primes": {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 100}, "minItems": 2, "maxItems": 4}})),
    ("empty_ok", "A shopping list (may be empty).", obj({"items": {"type": "array", "items": S, "maxItems": 2}})),
    ("nested", "A book and its author.", obj({"title": S, "author": obj({"name": S, "born": {"type": "integer", "minimum": 1000, "maximum": 2024}})})),
    ("deep", "A point inside a box.", obj({"box": obj({"corner": obj({"x": INT, "y": INT})})})),
    ("optional", "A product; the price is optional.", obj({"name": S, "price": {"type": "number", "minimum": 0, "maximum": 1000}}, required=["name"])),
    ("all_optional", "Any facts about Paris.", obj({"population": INT, "country": S}, required=[])),
    ("ref", "A line from one point to another.", {
        "$defs": {"pt": obj({"x": INT, "y": INT})},
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/pt"}, "end": {"$ref": "#/$defs/pt"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    }),
    ("ref_array", "Two people.", {
        "$defs": {"p": obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 99}})},
        "type": "object",
        "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/p"}, "minItems": 2, "maxItems": 2}},
        "required": ["people"],
        "additionalProperties": False,
    }),
    ("enum_array", "Two weekdays.", obj({"days": {"type": "array", "items": {"enum": ["mon", "tue", "wed", "thu", "fri"]}, "minItems": 2, "maxItems": 2}})),
    ("const", "A greeting.", obj({"kind": {"const": "greeting"}, "text": S})),
    ("anyof", "An id, numeric or textual.", obj({"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999}, {"type": "string", "pattern": "^[A-Z]{3}$"}]}})),
    ("nullable", "A middle name, or null.", obj({"middle": {"anyOf": [S, {"type": "null"}]}})),
    ("top_array", "Three small numbers.", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 3, "maxItems": 3}),
    ("top_enum", "Say yes or no.", {"enum": ["yes", "no"]}),
    ("top_int", "How many legs does a spider have?", {"type": "integer", "minimum": 0, "maximum": 100}),
    ("short_str", "A word for happy.", obj({"word": {"type": "string", "minLength": 2, "maxLength": 12}})),
    ("matrix", "A 2x2 matrix.", obj({"rows": {"type": "array", "items": {"type": "array", "items": INT, "minItems": 2, "maxItems": 2}, "minItems": 2, "maxItems": 2}})),
    ("mixed", "An order.", obj({"id": {"type": "integer", "minimum": 1, "maximum": 1000}, "paid": {"type": "boolean"}, "status": {"enum": ["new", "shipped"]}, "note": {"anyOf": [S, {"type": "null"}]}})),
    ("multiple_of", "An even number below 50.", obj({"n": {"type": "integer", "minimum": 0, "maximum": 48, "multipleOf": 2}})),
    ("exclusive", "A positive fraction below one.", obj({"x": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}})),
    ("weather", "The weather in Paris.", obj({"city": S, "temp_c": {"type": "number", "minimum": -50, "maximum": 60}, "sky": {"enum": ["sunny", "cloudy", "rain"]}}, required=["city", "sky"])),
]
