-- wrk script for `mailing bench --mode api`: an authenticated GET (the URL's path).
-- MAILING_TOKEN: an access token (or an API key).
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("MAILING_TOKEN") or "")
