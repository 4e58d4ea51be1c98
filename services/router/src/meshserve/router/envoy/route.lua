-- meshserve route.lua: pick the route of a KServe v2 request by its model name.
--
-- gRPC ModelInfer / ModelMetadata (unary): the name is the mm-model-id or mm-vmodel-id
-- header, else field 1 of the request message. The body is buffered and parsed: a
-- 5-byte gRPC prefix (flag 0: not compressed, length = the rest of the body: exactly one
-- message), then tag 0x0a, a varint length and the name. Field 1 must come first: when a
-- routing header names the model and the message does not start with field 1, field 1 is
-- taken as absent and written in front. The name goes into the
-- x-meshserve-shard header as its shard's scope key and the route cache is cleared, so
-- the route is chosen again by that header. The table layout (resources.py): with
-- x-meshserve-lookup set, that route is the shard's lookup route, whose metadata holds the
-- shard's table (parsed once per version into a Lua table kept across requests; one table
-- serves both listeners, each reads its protocol's column); the lookup header is removed, a
-- name found there gets its cluster in x-meshserve-cluster and the route is chosen once
-- more (the route to that cluster; else the shard's slow route). The
-- matcher layout: the name goes into x-meshserve-model too and the matched route carries
-- the concrete model id in its metadata ("model"). Field 1 is then rewritten to the
-- concrete id (the frame rebuilt with a new length prefix) and mm-model-id set to it; a
-- vmodel the request named goes into the dynamic metadata (meshserve.vmodel: the access
-- log's).
-- REST /v2/models/<name>[/...]: the same, with the name taken from (and rewritten in)
-- the path.
--
-- Never fails a request: anything unexpected (compressed or truncated frame, a wrong
-- tag, a huge length, ModelStreamInfer, another method, a Lua error) leaves the request
-- untouched with no model header, so it goes to the slow path (the Python router).
-- NAMESPACE (the router's namespace, "" for none): a name the client sends is looked up as
-- "<NAMESPACE>__<name>" (and rewritten to the concrete id the table gives for that).
-- SHARDS (number of route shards), LAYOUT ("table" or "matcher") and PROTOCOL ("grpc" or
-- "rest": the listener this copy runs on) are set by the lines Python prepends
-- (script.route_script, resources.build_listener). The scope key is "<PROTOCOL>-<shard>", "<PROTOCOL>-slow"
-- when the request is left to the slow path.

local MODEL_HEADER = "x-meshserve-model"
local SHARD_HEADER = "x-meshserve-shard"
local CLUSTER_HEADER = "x-meshserve-cluster"
local LOOKUP_HEADER = "x-meshserve-lookup"
local MAX_NAME = 512
local GRPC_METHODS = { ModelInfer = true, ModelMetadata = true }
local OTHER_ROUTING_HEADERS = { "mm-model-id-bin", "mm-vmodel-id-bin", "tas-model-id" }

-- the scope key: "<protocol>-<shard>" (every listener gets every scope over SRDS)
local function shard_of(name)
  if SHARDS <= 1 then return PROTOCOL .. "-0" end
  local h = 0
  for i = 1, #name do
    h = (h * 31 + name:byte(i)) % 4294967296 -- stays below 2^53: exact in a double
  end
  return PROTOCOL .. "-" .. tostring(h % SHARDS)
end

local SLOW_SCOPE = PROTOCOL .. "-slow"

local function valid_name(name)
  return name ~= nil and #name > 0 and #name <= MAX_NAME and name:find("^[\33-\126]+$") ~= nil
end

-- the name a client sent as the router resolves it (its namespace in front)
local function resolved(name)
  if NAMESPACE == "" or name == nil or name == "" then return name end
  return NAMESPACE .. "__" .. name
end

-- (value, position after it) of the varint at pos; nil if longer than 5 bytes or cut off
local function read_varint(s, pos)
  local value, scale = 0, 1
  for i = pos, math.min(#s, pos + 4) do
    local b = s:byte(i)
    value = value + (b % 128) * scale
    if b < 128 then return value, i + 1 end
    scale = scale * 128
  end
  return nil
end

local function encode_varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

-- the name in field 1 of a one-message uncompressed gRPC frame ("" if the message does not
-- start with field 1: official serializers write fields in number order, so it is absent),
-- and the position where the rest of the message starts; nil if the frame is not that
-- `head`: the frame's first bytes (enough for the prefix, the tag, the varint and a name of
-- MAX_NAME bytes); `total`: the whole body's length, so a large tensor is not copied into Lua
-- just to read the name in front of it
local HEAD_BYTES = 5 + 1 + 5 + MAX_NAME
local function parse_frame(head, total)
  if #head < 5 or head:byte(1) ~= 0 then return nil end
  local length = ((head:byte(2) * 256 + head:byte(3)) * 256 + head:byte(4)) * 256 + head:byte(5)
  if length ~= total - 5 then return nil end
  if length == 0 or head:byte(6) ~= 10 then return "", 6 end
  local n, start = read_varint(head, 7)
  if n == nil or n > MAX_NAME or start + n - 1 > #head then return nil end
  return head:sub(start, start + n - 1), start + n
end

local function rebuild_frame(frame, after_name, name)
  local message = "\10" .. encode_varint(#name) .. name .. frame:sub(after_name)
  return "\0" .. be32(#message) .. message
end

-- routing header value, false if conflicting or unsupported ones are present
local function header_name(headers)
  for _, key in ipairs(OTHER_ROUTING_HEADERS) do
    if headers:get(key) ~= nil then return false end
  end
  local model, vmodel = headers:get("mm-model-id"), headers:get("mm-vmodel-id")
  if model ~= nil and vmodel ~= nil then return false end
  return model or vmodel
end

-- the table layout: a shard's names, parsed from its lookup route's metadata once per
-- version. "<name> <gRPC cluster digest> <REST cluster digest>[ <model id>]\n" per name ("-":
-- no cluster for that protocol); the model id is written for a vmodel.
local tables = {} -- scope key -> { v = version, cluster = {name -> cluster}, model = {vmodel -> model id} }
local CLUSTER_PREFIX = "ms-" .. PROTOCOL .. "-"

local function parse_table(version, text)
  local cluster, model, full = {}, {}, {}
  local grpc = PROTOCOL == "grpc"
  for name, g, r, target in text:gmatch("(%S+) (%S+) (%S+) ?(%S*)\n") do
    local digest = grpc and g or r
    if digest ~= "-" then
      local c = full[digest]
      if c == nil then
        c = CLUSTER_PREFIX .. digest .. "-or-slow"
        full[digest] = c
      end
      cluster[name] = c
      if target ~= "" then model[name] = target end
    end
  end
  return { v = version, cluster = cluster, model = model }
end

-- set the routing headers for name, choose the route again; returns its concrete model id
-- and whether name is a vmodel (nil: no route, the request stays on the slow path)
local function choose(handle, headers, name)
  local scope = shard_of(name)
  headers:replace(SHARD_HEADER, scope)
  if LAYOUT == "matcher" then
    headers:replace(MODEL_HEADER, name)
    handle:clearRouteCache()
    local metadata = handle:metadata()
    local model = metadata and metadata:get("model")
    return model, model ~= nil and model ~= name
  end
  headers:replace(LOOKUP_HEADER, "1")
  handle:clearRouteCache()
  local metadata = handle:metadata() -- the shard's lookup route, which carries its table
  local version = metadata and metadata:get("v")
  local t = tables[scope]
  if version ~= nil and (t == nil or t.v ~= version) then
    t = parse_table(version, metadata:get("t") or "")
    tables[scope] = t
  end
  headers:remove(LOOKUP_HEADER)
  local cluster = version ~= nil and t.cluster[name]
  if not cluster then
    handle:clearRouteCache() -- the shard's slow route
    return nil
  end
  headers:replace(CLUSTER_HEADER, cluster)
  handle:clearRouteCache() -- the route to the cluster that header names
  local model = t.model[name]
  return model or name, model ~= nil
end

-- a request routed to a pod: the vmodel it named for the access log, and whether its
-- error answer is looked at (envoy_on_response)
local function mark(handle, vmodel, infer)
  if vmodel == nil and not infer then return end
  local metadata = handle:streamInfo():dynamicMetadata()
  if vmodel ~= nil then metadata:set("meshserve", "vmodel", vmodel) end
  if infer then metadata:set("meshserve", "infer", "1") end
end

local function route_grpc(handle, headers, method)
  local from_header = header_name(headers)
  if from_header == false then return end
  local body = handle:body()
  if body == nil then return end
  headers = handle:headers() -- the wrapper taken before the script yielded for the body is dead
  local total = body:length()
  local in_body, after_name = parse_frame(body:getBytes(0, math.min(total, HEAD_BYTES)), total)
  if in_body == nil then return end
  local name = resolved(from_header or in_body)
  if not valid_name(name) then return end
  local model, is_vmodel = choose(handle, headers, name)
  if model == nil then return end
  if model ~= in_body then body:setBytes(rebuild_frame(body:getBytes(0, total), after_name, model)) end
  headers:remove("mm-vmodel-id")
  headers:replace("mm-model-id", model)
  mark(handle, is_vmodel and name or nil, true)
end

-- what a pod is sent: POST .../infer, GET of the metadata and readiness; any other verb is
-- the slow path's (405 with an Allow header)
local function rest_verb_ok(method, rest)
  local tail = rest:gsub("^/versions/[^/?#]+", "")
  if tail:sub(1, 6) == "/infer" then return method == "POST" end
  if tail == "" or tail:sub(1, 1) == "?" or tail:sub(1, 6) == "/ready" then return method == "GET" end
  return false
end

local function route_rest(handle, headers, path)
  local prefix, name, rest = path:match("^(/v2/models/)([^/?#]+)(.*)$")
  if name == nil then return end
  if not rest_verb_ok(headers:get(":method") or "", rest) then return end
  -- the binary tensor extension: the Python router turns it into what the model server reads
  if headers:get("inference-header-content-length") ~= nil then return end
  local from_header = header_name(headers)
  if from_header == false then return end
  local chosen = resolved(from_header or name)
  if not valid_name(chosen) then return end
  local model, is_vmodel = choose(handle, headers, chosen)
  if model == nil then return end
  if model ~= name then headers:replace(":path", prefix .. model .. rest) end
  headers:remove("mm-vmodel-id")
  headers:replace("mm-model-id", model)
  -- an error body is rewritten on the way back (map_error): it must not come compressed
  headers:remove("accept-encoding")
  mark(handle, is_vmodel and chosen or nil, rest:sub(1, 6) == "/infer" or rest:match("^/versions/[^/]+/infer") ~= nil)
end

local function route(handle)
  local headers = handle:headers()
  -- a client cannot pick a route itself: these headers are ours
  local path = headers:get(":path") or ""
  headers:remove(MODEL_HEADER)
  headers:remove(CLUSTER_HEADER)
  headers:remove(LOOKUP_HEADER)
  headers:replace(SHARD_HEADER, SLOW_SCOPE)
  if PROTOCOL == "grpc" then
    local method = path:match("^/inference%.GRPCInferenceService/(%w+)$")
    if method ~= nil and GRPC_METHODS[method] then route_grpc(handle, headers, method) end
  elseif path:sub(1, 11) == "/v2/models/" then
    route_rest(handle, headers, path)
  end
end

function envoy_on_request(handle)
  local ok, err = pcall(route, handle)
  if not ok then
    handle:logWarn("meshserve route.lua: " .. tostring(err) .. "; using the slow path")
    -- a body already rewritten names the concrete model id, which the slow path routes too
    pcall(function()
      local headers = handle:headers()
      headers:remove(MODEL_HEADER)
      headers:remove(CLUSTER_HEADER)
      headers:remove(LOOKUP_HEADER)
      headers:replace(SHARD_HEADER, SLOW_SCOPE)
      handle:clearRouteCache()
    end)
  end
end

-- MLServer answers an inference request whose tensors the model cannot take with INTERNAL
-- (REST: 500) and the Python exception's text. For the client that is a bad request: as
-- the Python router does (upstream_errors.py), such an answer to an inference request
-- becomes INVALID_ARGUMENT (REST: 400), the model server's text kept. Only error answers
-- are looked at: a gRPC error is trailers-only (the status is in the headers), a REST
-- body is read only for a 500.
local BAD_INPUT = {
  "features, but", "is expecting", "cannot reshape array", "buffer size must be a multiple",
  "could not convert", "invalid literal for", "unsupported type", "unsupported datatype", "datatype",
  "dtype", "shape mismatch", "incompatible shape", "expected shape", "wrong shape",
  "builtins.valueerror", "builtins.typeerror", "is not a valid input", "is not a valid tensor",
  "unpack requires a buffer", "list index out of range", "valueerror:", "typeerror:",
  "unicodedecodeerror:", "jsondecodeerror:",
}

local function bad_input(text)
  text = text:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end):lower()
  for _, pattern in ipairs(BAD_INPUT) do
    if text:find(pattern, 1, true) then return true end
  end
  return false
end

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end))
end

local function map_error(handle)
  local headers = handle:headers()
  -- the common case first, at the cost of one header read: a gRPC answer that carries its
  -- status in the trailers (no error of the kind below) or a REST answer below 422
  if PROTOCOL == "grpc" then
    local status = headers:get("grpc-status")
    if status ~= "2" and status ~= "13" then return end
  else
    local status = headers:get(":status")
    if status ~= "500" and status ~= "422" then return end
  end
  if PROTOCOL == "grpc" and headers:get("grpc-status") == "2" and headers:get("grpc-message") == "Payload Too Large" then
    -- Envoy's own answer to a body over the buffer limit (gRPC clients would read UNKNOWN)
    headers:replace("grpc-status", "8")
    headers:replace("grpc-message", "the request is larger than the router's message size limit")
    return
  end
  local meta = handle:streamInfo():dynamicMetadata():get("meshserve")
  if meta == nil or meta["infer"] ~= "1" then return end
  if PROTOCOL == "grpc" then
    local status, message = headers:get("grpc-status"), headers:get("grpc-message") or ""
    if (status == "13" and bad_input(message))
      or (status == "2" and message:lower():find("error parsing message", 1, true)) then
      headers:replace("grpc-status", "3")
    end
  elseif headers:get(":status") == "500" then
    local body = handle:body()
    if body ~= nil and bad_input(body:getBytes(0, math.min(body:length(), 4096))) then
      handle:headers():replace(":status", "400")
    end
  elseif headers:get(":status") == "422" then
    -- the model server's request validation (FastAPI): the router's 400 and {"error": ...}
    local body = handle:body()
    if body == nil then return end
    local text = body:getBytes(0, math.min(body:length(), 4096))
    local json = '{"error": "invalid inference request: ' .. json_escape(text) .. '"}'
    body:setBytes(json)
    headers = handle:headers()
    headers:replace(":status", "400")
    headers:replace("content-type", "application/json")
    headers:replace("content-length", tostring(#json))
  end
end

function envoy_on_response(handle)
  local ok, err = pcall(map_error, handle)
  if not ok then handle:logWarn("meshserve route.lua (response): " .. tostring(err)) end
end
