// Rewrites a request's JSON schema into the subset node-llama-cpp 3.22.1 turns into a grammar.
//
// node-llama-cpp's converter quietly turns what it does not know into `null` (anyOf, `{}`, `true`),
// makes every listed property mandatory, and only follows `#/$defs/` references. Generated schemas
// (schemars) use all of those, so they are rewritten: references are inlined, anyOf becomes oneOf,
// allOf is merged, mixed type lists become oneOf, and an object with a `required` list keeps only
// its required properties (optional fields are left out rather than forced in). Strings without a
// maxLength get `limits.maxStringLength`: a 135M model can loop inside a string until the token
// cap cuts the JSON off. Keywords the grammar cannot enforce (minimum, pattern, …) are dropped.

// Depth at which $ref inlining gives up and allows any JSON (guards against recursive schemas).
const MAX_REF_DEPTH = 8;

const ANY_JSON = {
  oneOf: [{ type: "object", additionalProperties: true }, { type: ["string", "number", "boolean", "null"] }],
};
const STRING_FORMATS = new Set(["date-time", "time", "date"]);
const SIMPLE_TYPES = new Set(["string", "number", "integer", "boolean", "null"]);

function resolveReference(root, reference) {
  if (typeof reference !== "string" || !reference.startsWith("#/")) return undefined;
  let node = root;
  for (const rawPart of reference.slice(2).split("/")) {
    const part = decodeURIComponent(rawPart).replaceAll("~1", "/").replaceAll("~0", "~");
    if (node === null || typeof node !== "object" || !(part in node)) return undefined;
    node = node[part];
  }
  return node;
}

function mergeAllOf(parts) {
  const merged = {};
  for (const part of parts) {
    for (const [key, value] of Object.entries(part)) {
      if (key === "properties") merged.properties = { ...merged.properties, ...value };
      else if (key === "required") merged.required = [...new Set([...(merged.required ?? []), ...value])];
      else merged[key] = value;
    }
  }
  return merged;
}

// `schema`: the request's JSON schema (any JSON value); `limits.maxStringLength`: 0 = unbounded.
export function toGrammarSchema(schema, limits, root = schema, depth = 0) {
  if (schema === true || schema === undefined || schema === null) return ANY_JSON;
  if (schema === false || typeof schema !== "object" || Array.isArray(schema)) return { type: "null" };
  if (schema.$ref !== undefined) {
    const target = depth < MAX_REF_DEPTH ? resolveReference(root, schema.$ref) : undefined;
    if (target === undefined) return ANY_JSON;
    const { $ref: _ignored, ...siblings } = schema;
    return toGrammarSchema(mergeAllOf([target, siblings]), limits, root, depth + 1);
  }
  if (Array.isArray(schema.allOf)) {
    const { allOf, ...rest } = schema;
    return toGrammarSchema(mergeAllOf([rest, ...allOf]), limits, root, depth);
  }
  const alternatives = schema.oneOf ?? schema.anyOf;
  if (Array.isArray(alternatives)) {
    return { oneOf: alternatives.map((alternative) => toGrammarSchema(alternative, limits, root, depth)) };
  }
  if ("const" in schema) return { const: schema.const };
  if (Array.isArray(schema.enum)) return { enum: schema.enum };

  const types = schema.type === undefined ? inferTypes(schema) : [schema.type].flat();
  if (types.length === 0) return ANY_JSON;
  if (types.length > 1) {
    if (types.every((type) => SIMPLE_TYPES.has(type) && type !== "string")) return { type: types };
    return { oneOf: types.map((type) => toGrammarSchema({ ...schema, type }, limits, root, depth)) };
  }
  const [type] = types;
  if (type === "object") return objectSchema(schema, limits, root, depth);
  if (type === "array") {
    const result = { type: "array", items: toGrammarSchema(schema.items, limits, root, depth) };
    if (Array.isArray(schema.prefixItems)) {
      result.prefixItems = schema.prefixItems.map((item) => toGrammarSchema(item, limits, root, depth));
      if (schema.items === undefined || schema.items === false) delete result.items;
    }
    copyIntegers(schema, result, ["minItems", "maxItems"]);
    return result;
  }
  if (type === "string") {
    if (STRING_FORMATS.has(schema.format)) return { type: "string", format: schema.format };
    const result = { type: "string" };
    copyIntegers(schema, result, ["minLength", "maxLength"]);
    if (result.maxLength === undefined && limits.maxStringLength > 0) {
      result.maxLength = Math.max(limits.maxStringLength, result.minLength ?? 0);
    }
    return result;
  }
  if (SIMPLE_TYPES.has(type)) return { type };
  return ANY_JSON;
}

function inferTypes(schema) {
  if (schema.properties !== undefined || schema.additionalProperties !== undefined) return ["object"];
  if (schema.items !== undefined || schema.prefixItems !== undefined) return ["array"];
  return [];
}

function objectSchema(schema, limits, root, depth) {
  const declared = Object.entries(schema.properties ?? {});
  const required = Array.isArray(schema.required) ? new Set(schema.required) : undefined;
  const kept = declared.filter(([name]) => required === undefined || required.has(name));
  const result = { type: "object", properties: {} };
  for (const [name, property] of kept) result.properties[name] = toGrammarSchema(property, limits, root, depth);
  // An object-valued additionalProperties (a flattened map in a generated schema) is left out: it
  // keeps the small model on the declared shape. A plain `{"type":"object"}` allows any keys.
  const extra = schema.additionalProperties;
  if (extra === true || (extra === undefined && declared.length === 0)) result.additionalProperties = true;
  return result;
}

function copyIntegers(from, to, keys) {
  for (const key of keys) if (Number.isInteger(from[key]) && from[key] >= 0) to[key] = from[key];
}
