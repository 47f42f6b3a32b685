<?php
// fjord php runtime shim: the OpenFaaS php8 template's contract, one process per request
// (fork mode, as upstream runs it under the classic watchdog). The request body arrives on
// stdin, `(new App\Handler())->handle($body)` is called with it, and what it returns is
// echoed to stdout: the response body. Request metadata is in the Http_* environment
// variables (getenv('Http_Method'), getenv('Http_Path'), getenv('Http_Query'),
// getenv('Http_Content_Type'), ...). An uncaught error exits non-zero (fjord answers 500);
// the message goes to stderr (fprocess sets display_errors=stderr).
//
// Why fork mode and not `php -S` or a socket loop: PHP code is written for a fresh process
// per request (globals, statics and `exit` are per request), upstream php8 runs it so, and
// PHP starts in ~12 ms.

declare(strict_types=1);

// Composer's autoloader when the user ran `composer install` (vendor/ in the handler folder);
// otherwise App\ classes from function/src/, as the skeleton's composer.json maps them (PSR-4),
// since Composer needs Packagist, which a build may not reach.
if (is_file(__DIR__ . '/function/vendor/autoload.php')) {
    require __DIR__ . '/function/vendor/autoload.php';
}
spl_autoload_register(static function (string $class): void {
    if (strncmp($class, 'App\\', 4) !== 0) {
        return;
    }
    $file = __DIR__ . '/function/src/' . str_replace('\\', '/', substr($class, 4)) . '.php';
    if (is_file($file)) {
        require $file;
    }
});

$stdin = file_get_contents('php://stdin');
$response = (new App\Handler())->handle($stdin);
echo $response;
