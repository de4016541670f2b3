-- wrk script for benches/wrk/publish.sh: POST /api/v1/events with the API key from $AIVENTBUS_KEY.
wrk.method = "POST"
wrk.body = '{"topic":"bench.http","payload":{"host":"bench","value":42}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AIVENTBUS_KEY")

-- Any answer other than 200 is counted and reported, so a run of errors cannot pass for speed.
local failures = 0
function response(status, headers, body)
  if status ~= 200 then
    failures = failures + 1
    if failures <= 3 then
      io.stderr:write("status " .. status .. ": " .. body .. "\n")
    end
  end
end
