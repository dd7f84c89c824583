import argparse

import pytest

from chameleon_common.security import SecurityConfig, add_arguments, config_from_args
from scheduler_svc.main import add_arguments as scheduler_arguments, config_from_args as scheduler_config


def test_flags_parse_into_a_validated_config(tmp_path):
    token = tmp_path / "token"
    token.write_text("  abc \n")
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    cfg = config_from_args(ap.parse_args(["--auth-token-file", str(token), "--max-message-bytes", "4096"]))
    assert cfg.token() == "abc" and cfg.max_message_bytes == 4096 and not cfg.tls
    assert ("grpc.max_receive_message_length", 4096) in cfg.channel_options()


def test_bad_security_settings_are_refused(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match="go together"):
        SecurityConfig(tls_cert=cert)
    with pytest.raises(ValueError, match="no such file"):
        SecurityConfig(auth_token_file=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        SecurityConfig(auth_token_file=empty)
    with pytest.raises(ValueError, match="max-message-bytes"):
        SecurityConfig(max_message_bytes=10)


def test_scheduler_limits_flags():
    ap = argparse.ArgumentParser()
    scheduler_arguments(ap)
    cfg = scheduler_config(ap.parse_args(["--store", "h:1", "--worker", "h:2", "--max-queued", "7",
                                          "--max-prompt-bytes", "1000", "--retry-after-s", "2.5"]))
    assert (cfg.limits.max_queued, cfg.limits.max_prompt_bytes, cfg.limits.retry_after_s) == (7, 1000, 2.5)
    assert cfg.security.max_message_bytes == 16 << 20
    with pytest.raises(ValueError, match="max_queued"):
        scheduler_config(ap.parse_args(["--store", "h:1", "--worker", "h:2", "--max-queued", "0"]))
