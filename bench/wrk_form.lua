-- wrk script: POST the ttsfm form body (input=...&voice=alloy&response_format=mp3).
-- Environment: WRK_INPUT (the text, default "Hello from the ttshub benchmark."),
--              WRK_UNIQUE=1 appends a per-request counter to the input (every request a cache miss),
--              WRK_AUTH sets the Authorization header (e.g. "Bearer KEY"),
--              WRK_VOICE (default alloy), WRK_FORMAT (default mp3).
local input = os.getenv("WRK_INPUT") or "Hello from the ttshub benchmark."
local unique = os.getenv("WRK_UNIQUE") == "1"
local auth = os.getenv("WRK_AUTH")

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local prefix = "input=" .. urlencode(input)
local suffix = "&voice=" .. urlencode(os.getenv("WRK_VOICE") or "alloy") ..
               "&response_format=" .. urlencode(os.getenv("WRK_FORMAT") or "mp3")
wrk.body = prefix .. suffix

local n = 0
local seed = tostring(os.time()) .. tostring(math.random(1, 1e9))
if unique then
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, prefix .. "+" .. seed .. "-" .. n .. suffix)
  end
end
