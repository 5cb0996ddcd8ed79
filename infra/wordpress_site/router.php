<?php
/**
 * Router for PHP's built-in server in front of Debian's WordPress (/usr/share/wordpress).
 *
 * Written by Pressline (infra/wordpress.py). It does what Apache's rewrite rules would:
 *   1. selects this instance's config: Debian's wp-config.php reads $_SERVER['WORDPRESS_CONFIG']
 *      (php -S does not copy the environment into $_SERVER, so it is set here from getenv);
 *   2. serves /wp-content/* statics from the instance's WP_CONTENT_DIR, outside the docroot;
 *   3. lets existing docroot files (wp-admin/, wp-login.php, ...) through;
 *   4. sends everything else (pretty permalinks, /wp-json/...) to index.php.
 */

$instance = getenv('PRESSLINE_WP_INSTANCE');
if (!is_string($instance) || !preg_match('/^[A-Za-z0-9-]+$/', $instance)) {
    http_response_code(500);
    echo 'PRESSLINE_WP_INSTANCE is not set';
    return true;
}
$_SERVER['WORDPRESS_CONFIG'] = $instance;

$path = urldecode((string) parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH));
$content_dir = getenv('PRESSLINE_WP_CONTENT_DIR');

if (is_string($content_dir) && strncmp($path, '/wp-content/', 12) === 0) {
    $base = realpath($content_dir);
    $file = realpath($content_dir . substr($path, strlen('/wp-content')));
    if ($base !== false && $file !== false && strncmp($file, $base . '/', strlen($base) + 1) === 0
        && is_file($file) && substr($file, -4) !== '.php') {
        $types = ['css' => 'text/css', 'js' => 'application/javascript', 'svg' => 'image/svg+xml',
                  'png' => 'image/png', 'jpg' => 'image/jpeg', 'jpeg' => 'image/jpeg', 'gif' => 'image/gif',
                  'webp' => 'image/webp', 'woff2' => 'font/woff2', 'json' => 'application/json'];
        $ext = strtolower(pathinfo($file, PATHINFO_EXTENSION));
        header('Content-Type: ' . ($types[$ext] ?? 'application/octet-stream'));
        header('Content-Length: ' . filesize($file));
        readfile($file);
        return true;
    }
}

$docroot = rtrim($_SERVER['DOCUMENT_ROOT'], '/');
if ($path !== '/' && file_exists($docroot . $path)) {
    return false;  // a real file or directory: php -S serves it (runs .php, finds a dir's index.php)
}

$_SERVER['SCRIPT_NAME'] = '/index.php';
$_SERVER['SCRIPT_FILENAME'] = $docroot . '/index.php';
chdir($docroot);
require $docroot . '/index.php';
return true;
