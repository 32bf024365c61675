-- wrk script for `mailing bench --mode api`: POST /api/v1/tx, one transactional message
-- per request, each to a different address, through the provider in MAILING_TX_PROVIDER.
-- MAILING_TOKEN: an access token; MAILING_TEMPLATE_ID: the template to render.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("MAILING_TOKEN") or "")
wrk.headers["Content-Type"] = "application/json"
local template = os.getenv("MAILING_TEMPLATE_ID") or "1"
local provider = os.getenv("MAILING_TX_PROVIDER") or "file"
local counter = 0

function setup(thread)
  thread:set("thread_id", tostring(math.random(1, 1000000000)))
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"template_id":%s,"to":{"email":"load-%s-%d@bench.example","name":"Load %d"},' ..
    '"data":{"order":"A-%d"},"from":"Shop <news@shop.example>","provider":"%s"}',
    template, thread_id or "0", counter, counter, counter, provider)
  return wrk.format(nil, nil, nil, body)
end
