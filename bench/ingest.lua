-- wrk script of the ingest benchmark (bench/ingest.py starts wrk with it).
--
-- Each wrk thread drives one connection (the benchmark runs wrk with -t equal to -c) as
-- one nurse's tablet: its own session token, its own clinic, and a distinct valid
-- blood-pressure report with its own Idempotency-Key on every request. About half of
-- the reports cross an alert threshold of the default rules (docs/clinical-rules.md):
--
--   50 %  normal reading (below every threshold)
--   20 %  pre-dose reading above the hold criteria (bp-pre-dose-hold, high)
--   17 %  CTCAE grade 3 (bp-ctcae-grade-3, high)
--    7 %  severe hypertension, systolic 180 (bp-severe-hypertension, urgent)
--    6 %  hypertensive emergency, systolic above 180 with a severe headache
--         (bp-hypertensive-crisis, critical)
--
-- The last two also feed the pattern rules (a cluster of post-dose systolic 180 or more
-- among distinct patients per clinic, repeated urgent events per patient). bench/pgbench_script.py draws the same mix.
--
-- Configuration comes from the environment (set by bench/ingest.py):
--   BENCH_TOKENS    file with one "token clinic" pair per line, one line per connection
--   BENCH_RUN       a word unique to this run, part of every Idempotency-Key
--   BENCH_EPOCH     Unix time; reports occurred up to six hours before it
--   BENCH_PATIENTS  patients per clinic

local threads = {}
local next_id = 0

function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
end

local DRUGS = { "esketamine_nasal", "ketamine_iv", "ketamine_im", "ketamine_oral" }
local OUTCOMES = { "resolved", "recovering", "ongoing" }
local NORMAL_PHASES = { "pre_dose", "post_dose", "discharge" }

local token, clinic, run, epoch, patients
local counter = 0
ok = 0
failed = 0
first_failure = ""

function init(args)
    local lines = {}
    for line in io.lines(os.getenv("BENCH_TOKENS")) do
        table.insert(lines, line)
    end
    local mine = lines[(id % #lines) + 1]
    token, clinic = mine:match("^(%S+)%s+(%S+)$")
    run = os.getenv("BENCH_RUN")
    epoch = tonumber(os.getenv("BENCH_EPOCH"))
    patients = tonumber(os.getenv("BENCH_PATIENTS"))
    math.randomseed(epoch + id * 7919)
end

local function pick(list)
    return list[math.random(#list)]
end

-- Phase, systolic, diastolic and symptoms (JSON) of one reading of the mix above.
local function reading()
    local r = math.random()
    if r < 0.50 then
        return pick(NORMAL_PHASES), math.random(100, 139), math.random(60, 89), "[]"
    elseif r < 0.70 then
        return "pre_dose", math.random(141, 159), math.random(70, 89), "[]"
    elseif r < 0.87 then
        return "post_dose", math.random(160, 179), math.random(80, 99), "[]"
    elseif r < 0.94 then
        return "post_dose", 180, math.random(90, 109), "[]"
    end
    return "post_dose", math.random(181, 220), math.random(95, 119), '["severe_headache"]'
end

function request()
    counter = counter + 1
    local phase, systolic, diastolic, symptoms = reading()
    local occurred = os.date("!%Y-%m-%dT%H:%M:%SZ", epoch - math.random(0, 6 * 3600))
    local body = string.format(
        '{"kind":"blood_pressure","clinic":"%s","patient_ref":"PT-%05d",'
            .. '"occurred_at":"%s","drug":"%s","outcome":"%s","phase":"%s",'
            .. '"systolic":%d,"diastolic":%d,"pulse":%d,"minutes_after_dose":%d,'
            .. '"age_band":"under_65","symptoms":%s}',
        clinic, math.random(1, patients), occurred, pick(DRUGS), pick(OUTCOMES), phase,
        systolic, diastolic, math.random(55, 120), math.random(0, 240), symptoms
    )
    local headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. token,
        ["Idempotency-Key"] = string.format("bench-%s-%d-%d", run, id, counter),
    }
    return wrk.format("POST", "/api/v1/reports", headers, body)
end

function response(status, headers, body)
    if status == 201 then
        ok = ok + 1
    else
        failed = failed + 1
        if first_failure == "" then
            first_failure = status .. " " .. string.sub(body or "", 1, 300)
        end
    end
end

function done(summary, latency, requests)
    local created, refused, failure = 0, 0, ""
    for _, thread in ipairs(threads) do
        created = created + thread:get("ok")
        refused = refused + thread:get("failed")
        local f = thread:get("first_failure")
        if failure == "" and f ~= nil and f ~= "" then
            failure = f
        end
    end
    local e = summary.errors
    -- One line for bench/ingest.py; failure text is quoted with %q (Lua string syntax).
    io.write(string.format(
        "BENCH_RESULT created=%d refused=%d duration_us=%d requests=%d"
            .. " p50_us=%d p90_us=%d p99_us=%d max_us=%d"
            .. " connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
        created, refused, summary.duration, summary.requests,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
        e.connect, e.read, e.write, e.timeout
    ))
    -- The latency distribution, every half percent, for merging several runs.
    local points = {}
    for i = 1, 200 do
        table.insert(points, string.format("%d", latency:percentile(i / 2)))
    end
    io.write("BENCH_LATENCY_US " .. table.concat(points, ",") .. "\n")
    if failure ~= "" then
        io.write("BENCH_FAILURE " .. string.gsub(failure, "\n", " ") .. "\n")
    end
end
