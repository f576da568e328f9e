-- wrk script: POST the seed-2 JSON body {"text","voice_id","output_format"} (POST /api/synthesize).
-- Environment: WRK_INPUT (the text, default "Hello from the ttshub benchmark."),
--              WRK_UNIQUE=1 appends a per-request counter to the text (every request a different input),
--              WRK_AUTH sets the Authorization header, WRK_VOICE (default alloy), WRK_FORMAT (default mp3).
local input = os.getenv("WRK_INPUT") or "Hello from the ttshub benchmark."
local unique = os.getenv("WRK_UNIQUE") == "1"
local auth = os.getenv("WRK_AUTH")

local function q(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local prefix = '{"text":' .. q(input):sub(1, -2)
local suffix = '","voice_id":' .. q(os.getenv("WRK_VOICE") or "alloy") ..
               ',"output_format":' .. q(os.getenv("WRK_FORMAT") or "mp3") .. '}'
wrk.body = prefix .. suffix

local n = 0
local seed = tostring(os.time()) .. tostring(math.random(1, 1e9))
if unique then
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, prefix .. " " .. seed .. "-" .. n .. suffix)
  end
end
