import pytest

from sync.keys import snake_case, transliterate

# The reference's table (Engage's keys follow Segment's Go snakecase package), plus our transliteration.
VECTORS = [
    ("Order Completed Last 30days", "order_completed_last_30days"),
    ("Order Completed Last 30 Days", "order_completed_last_30_days"),
    ("orderCompletedLast30Days", "order_completed_last30_days"),
    ("sampleText", "sample_text"),
    ("samPLE text", "sam_ple_text"),
    ("sample 2 Text", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("CStringRef", "cstring_ref"),
    ("ABCTest", "abctest"),
    ("5TEst", "5test"),
    ("2FA Enabled", "2fa_enabled"),
    ("Enabled 2FA", "enabled_2fa"),
    ("f_pX9", "f_p_x9"),
    ("p_z9Rg", "p_z9_rg"),
    ("High-Value Customers!", "high_value_customers"),
    ("VIP (EU) – Tier 2", "vip_eu_tier_2"),
    ("30 day actives", "30_day_actives"),
    ("a.b.c", "a_b_c"),
    ("iOS users", "i_os_users"),
    ("HTTPServer 2xx", "httpserver_2xx"),
    ("first_time_shopper", "first_time_shopper"),
    ("__foo__bar", "foo_bar"),
    ("Über Kunden", "uber_kunden"),
    ("café users", "cafe_users"),
]

# go-snakecase's own test table, whole (segmentio/go-snakecase, snake_test.go, current version).
UPSTREAM = [
    ("@49L0S145_¬fwHƒ0TSLNVp", "49l0s145_fw_h_0tslnvp"),
    ("lk0B@bFmjrLQ_Z6YL", "lk0_b_b_fmjr_lq_z6yl"),
    ("samPLE text", "sam_ple_text"),
    ("sample text", "sample_text"),
    ("sample-text", "sample_text"),
    ("sample_text", "sample_text"),
    ("sample___text", "sample_text"),
    ("sampleText", "sample_text"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("sample 2 Text", "sample_2_text"),
    ("   sample   2    Text   ", "sample_2_text"),
    ("   $#$sample   2    Text   ", "sample_2_text"),
    ("SAMPLE 2 TEXT", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("FOO:BAR$BAZ", "foo_bar_baz"),
    ("FOO#BAR#BAZ", "foo_bar_baz"),
    ("something.com", "something_com"),
    ("$something%", "something"),
    ("•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("CStringRef", "cstring_ref"),
    ("5test", "5test"),
    ("test5", "test5"),
    ("THE5r", "the5r"),
    ("5TEst", "5test"),
    ("_5TEst", "5test"),
    ("@%#&5TEst", "5test"),
    ("edf_6N", "edf_6n"),
    ("f_pX9", "f_p_x9"),
    ("p_z9Rg", "p_z9_rg"),
    ("2FA Enabled", "2fa_enabled"),
    ("Enabled 2FA", "enabled_2fa"),
]

# Not go-snakecase's: the kebab-case table of a Go ``strcase`` package built on the same rules (there with
# "-" for "_"); they hold here too.
OTHER_PACKAGE = [
    ("here\nis\na\nmultiline\nstring", "here_is_a_multiline_string"),
    ('"hello world"', "hello_world"),
]


@pytest.mark.parametrize(
    ("name", "key"),
    [("_vip", "vip"), ("_5TEst", "5test"), ("_vip_customers", "vip_customers"), ("vip_", "vip"), ("a_Vip", "a_vip")],
)
def test_an_underscore_is_kept_only_after_the_first_character(name: str, key: str) -> None:
    assert snake_case(name) == key


@pytest.mark.parametrize(("name", "key"), VECTORS + UPSTREAM + OTHER_PACKAGE)
def test_snake_case_matches_engage_keys(name: str, key: str) -> None:
    assert snake_case(name) == key


@pytest.mark.parametrize("name", ["", "!!!", "日本語", "–"])
def test_names_without_letters_give_an_empty_key(name: str) -> None:
    assert snake_case(name) == ""


def test_transliteration_keeps_a_separator_for_letters_without_ascii_base() -> None:
    assert transliterate("Straße Øre") == "Strasse Ore"
    assert transliterate("aƒb") == "a b"


@pytest.mark.parametrize(("name", "key"), VECTORS)
def test_keys_are_stable(name: str, key: str) -> None:
    assert snake_case(key) == key
